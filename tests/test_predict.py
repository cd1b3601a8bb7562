"""Top-k prediction from a checkpoint: one image, a folder, a random sample, and bad requests."""

from __future__ import annotations

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.engine import train
from tlcourse.predict import Predictor, accuracy, format_predictions, list_images, probabilities


@pytest.fixture(scope="module")
def predictor_run(tiny_data_session, tmp_path_factory):
    result = train(data_dir=str(tiny_data_session), epochs=2, weights=None, batch_size=4, image_size=64,
                   freeze="all", augment=False, progress="none", output_dir=str(tmp_path_factory.mktemp("ck")))
    return result, Predictor(result.best_acc_path, device="cpu")


def test_predict_one_image(predictor_run, tiny_data_session):
    _, predictor = predictor_run
    image = tiny_data_session / "val" / "bees" / "img_0.png"
    pred = predictor.predict_image(image, topk=2)
    assert [name for name, _ in pred.topk] in (["ants", "bees"], ["bees", "ants"])
    assert pred.topk[0][1] >= pred.topk[1][1]
    assert sum(p for _, p in pred.topk) == pytest.approx(1.0, abs=1e-5)
    assert pred.true_label == "bees"


def test_predict_folder_matches_one_by_one(predictor_run, tiny_data_session):
    _, predictor = predictor_run
    folder = tiny_data_session / "val"
    batched = predictor.predict_folder(folder, topk=1, batch_size=5)
    assert len(batched) == len(list_images(folder)) == 16
    for pred in batched[:3]:
        single = predictor.predict_image(pred.path, topk=1)
        assert single.label == pred.label and single.prob == pytest.approx(pred.prob, abs=1e-5)
    assert accuracy(batched) is not None


def test_predict_random_sample_is_seeded(predictor_run, tiny_data_session):
    _, predictor = predictor_run
    first = predictor.predict_random(tiny_data_session / "val", n=5, seed=7)
    again = predictor.predict_random(tiny_data_session / "val", n=5, seed=7)
    assert [p.path for p in first] == [p.path for p in again] and len(first) == 5


def test_pretty_printer(predictor_run, tiny_data_session):
    _, predictor = predictor_run
    pred = predictor.predict_image(tiny_data_session / "val" / "ants" / "img_1.png")
    text = format_predictions([pred], root=tiny_data_session)
    lines = text.splitlines()
    assert lines[0] == "IMAGE: val/ants/img_1.png" and lines[1] == "TOPK:"
    assert lines[2].startswith("  1) ") and " p=0." in lines[2] or " p=1." in lines[2]


def test_binary_probabilities():
    probs = probabilities(torch.tensor([[0.0], [10.0]]))
    assert probs[0].tolist() == pytest.approx([0.5, 0.5]) and probs[1, 1] > 0.99


def test_bad_requests_are_clear(predictor_run, tiny_data_session, tmp_path):
    _, predictor = predictor_run
    image = tiny_data_session / "val" / "ants" / "img_0.png"
    with pytest.raises(TLCourseError, match="topk=3"):
        predictor.predict_image(image, topk=3)
    with pytest.raises(TLCourseError, match="does not exist"):
        predictor.predict_image(tmp_path / "nope.jpg")
    with pytest.raises(TLCourseError, match="no images"):
        predictor.predict_folder(tmp_path)
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    with pytest.raises(TLCourseError, match="fake.jpg"):
        predictor.predict_image(fake)
