"""Interpretation: the counts against a hand count, real checkpoints of other datasets, bad input, the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_image_folder

from tlcourse import TLCourseError
from tlcourse.cli import main
from tlcourse.engine import train
from tlcourse.interpret import Interpretation, interpret

FAST = dict(weights=None, batch_size=4, image_size=32, progress="none", augment=False)
CLASSES = ["cat", "dog", "fox"]


def _by_hand(targets: list[int], preds: list[int], single_logit: bool = False) -> Interpretation:
    """An Interpretation whose logits make exactly ``preds`` (no model needed for the counts)."""
    t = torch.tensor(targets)
    if single_logit:
        outputs = torch.tensor([[2.0 if p else -2.0] for p in preds])
        names = CLASSES[:2]
    else:
        outputs = torch.full((len(preds), 3), -1.0)
        outputs[torch.arange(len(preds)), torch.tensor(preds)] = 2.0
        names = CLASSES
    losses = torch.nn.functional.cross_entropy(outputs, t, reduction="none") if not single_logit else \
        torch.nn.functional.binary_cross_entropy_with_logits(outputs[:, 0], t.float(), reduction="none")
    return Interpretation(names, "val", [f"img_{i}.png" for i in range(len(t))], t, outputs, losses, None, None, "hand")


def test_confusion_matrix_and_per_class_metrics_match_a_hand_count():
    #          cat cat cat cat dog dog dog fox fox
    targets = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    preds = [0, 0, 1, 2, 1, 1, 0, 1, 1]
    interp = _by_hand(targets, preds)
    # counted by hand: cat -> cat 2, dog 1, fox 1; dog -> cat 1, dog 2; fox -> dog 2
    assert interp.confusion_matrix().tolist() == [[2, 1, 1], [1, 2, 0], [0, 2, 0]]
    normalised = interp.confusion_matrix(normalize=True)
    assert torch.allclose(normalised, torch.tensor([[2 / 4, 1 / 4, 1 / 4], [1 / 3, 2 / 3, 0], [0, 1, 0]]))
    assert interp.accuracy == pytest.approx(4 / 9)
    metrics = interp.per_class()
    # precision = right / predicted as the class (columns): cat 2/3, dog 2/5, fox 0/1
    assert metrics.precision == pytest.approx((2 / 3, 2 / 5, 0.0))
    assert metrics.recall == pytest.approx((2 / 4, 2 / 3, 0.0))
    f1 = [2 * p * r / (p + r) for p, r in ((2 / 3, 1 / 2), (2 / 5, 2 / 3))]
    assert metrics.f1 == pytest.approx((*f1, 0.0))
    assert metrics.support == (4, 3, 2) and metrics.predicted == (3, 5, 1)
    assert "fox" in str(metrics) and "<table>" in metrics._repr_html_() and "| fox |" in metrics.to_markdown()
    confused = interp.most_confused()
    assert [(c.true, c.predicted, c.count) for c in confused] == [
        ("fox", "dog", 2), ("cat", "dog", 1), ("cat", "fox", 1), ("dog", "cat", 1)]
    assert [c.count for c in interp.most_confused(2)] == [2, 1]
    assert interp.most_confused(min_count=2)[0].true == "fox" and len(interp.most_confused(min_count=2)) == 1


def test_top_losses_are_sorted_and_every_mistake_costs_more_than_ln2():
    interp = _by_hand([0, 0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 2, 1, 1, 0, 1, 1])
    top = interp.top_losses(9)
    assert [t.loss for t in top] == sorted((t.loss for t in top), reverse=True)
    assert {t.index for t in top[:5]} == set(interp.mistakes)        # here every mistake is confident
    for t in top:
        assert t.loss == pytest.approx(-math.log(t.true_prob), rel=1e-5)
        assert (t.true != t.predicted) == (t.loss > math.log(2))
    assert [t.index for t in interp.top_losses(2, mistakes_only=True)] == [t.index for t in top[:2]]


def test_single_logit_head_counts_both_classes():
    interp = _by_hand([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], single_logit=True)
    assert interp.confusion_matrix().tolist() == [[1, 1], [1, 2]]
    assert interp.probs.shape == (5, 2) and torch.allclose(interp.probs.sum(1), torch.ones(5))
    assert interp.per_class().recall == pytest.approx((1 / 2, 2 / 3))


@pytest.mark.parametrize("k", [0, 10, -1, 2.5])
def test_k_outside_the_split_is_a_clear_error(k):
    interp = _by_hand([0, 1, 2, 0, 1, 2, 0, 1, 2], [0] * 9)
    with pytest.raises(TLCourseError, match=r"k=.* must be between 1 and the number of images in the val split \(9\)"):
        interp.top_losses(k)
    if k in (0, -1, 2.5):
        with pytest.raises(TLCourseError, match="must be a whole number"):
            interp.most_confused(k)


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    """A real head-only run (cached features) on 3 classes that are not ants/bees, with 5 val images each."""
    root = make_image_folder(tmp_path_factory.mktemp("fox"), classes=CLASSES, per_class={"train": 6, "val": 5},
                             size=(48, 36))
    result = train(data_dir=str(root), arch="resnet18", epochs=3, lr=0.01,
                   output_dir=str(tmp_path_factory.mktemp("ck")), **FAST)
    return root, result


def test_interpret_a_run_reuses_its_cached_features_and_matches_the_checkpoint(three_class_run):
    root, result = three_class_run
    assert result.route == "features"
    from_run = interpret(result)
    from_file = interpret(result.best_acc_path)
    assert "cached while training" in from_run.features_from and "one backbone pass" in from_file.features_from
    assert torch.allclose(from_run.outputs, from_file.outputs, atol=1e-5)
    assert len(from_run) == 15 and from_run.class_names == CLASSES
    assert from_run.accuracy == result.best["acc"]     # best_acc.pt gives back training's number, exactly
    assert [p.parent.name for p in from_run.paths] == [CLASSES[t] for t in from_run.targets.tolist()]
    loss_fn = torch.nn.CrossEntropyLoss()
    assert from_run.losses.mean().item() == pytest.approx(loss_fn(from_run.outputs, from_run.targets).item(), rel=1e-5)
    assert from_run.image(0).shape == (3, 32, 32)
    train_split = interpret(result.best_acc_path, split="train")
    assert len(train_split) == 18 and train_split.split == "train"


def test_cli_writes_the_figures_and_the_report(three_class_run, tmp_path, capsys):
    _, result = three_class_run
    assert main(["interpret", "--checkpoint", str(result.best_acc_path), "--out", str(tmp_path / "cli"), "--k", "3",
                 "--cams", "2"]) == 0
    out = capsys.readouterr().out
    assert "15 val images, accuracy" in out and "most confused" in out
    for name in ("confusion.png", "top_losses.png", "gradcam.png", "report.md", "report.html"):
        assert f"{name}: {tmp_path / 'cli' / name}" in out and (tmp_path / "cli" / name).stat().st_size > 0
    report = (tmp_path / "cli" / "report.md").read_text()
    assert "| fox |" in report and "## Most confused" in report and "## Top losses" in report
    assert "<img src='gradcam.png'" in (tmp_path / "cli" / "report.html").read_text()


def test_bad_input_gives_one_line_errors(three_class_run, tmp_path, capsys):
    root, result = three_class_run
    other = make_image_folder(tmp_path / "other", classes=("ants", "bees"), per_class=2)
    mismatch = r"trained on classes \['cat', 'dog', 'fox'\], but .* has \['ants', 'bees'\]"
    with pytest.raises(TLCourseError, match=mismatch):
        interpret(result.best_acc_path, data_dir=other)
    with pytest.raises(TLCourseError, match="split 'test' does not exist in .*; it has train, val"):
        interpret(result.best_acc_path, split="test")
    with pytest.raises(TLCourseError, match="does not exist"):
        interpret(tmp_path / "missing.pt")
    assert main(["interpret", "--checkpoint", str(result.best_acc_path), "--k", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--k 16 is larger than the val split (15 images)" in err
    assert main(["interpret", "--checkpoint", str(result.best_acc_path), "--split", "test"]) == 2
    assert main(["interpret", "--checkpoint", str(result.best_acc_path), "--data-dir", str(other)]) == 2
    assert "trained on classes" in capsys.readouterr().err


def test_a_binary_single_logit_checkpoint(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), head="binary", epochs=1, output_dir=str(tmp_path), **FAST)
    interp = interpret(result.best_acc_path)
    assert interp.outputs.shape == (12, 1) and interp.probs.shape == (12, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(interp.outputs[:, 0], interp.targets.float(),
                                                                    reduction="none")
    assert torch.allclose(interp.losses, expected)
    assert interp.confusion_matrix().sum() == 12 and interp.grad_cam([0, 11]).heatmaps.shape == (2, 32, 32)


def test_grad_cam_examples_put_mistakes_first_then_each_class_in_turn():
    from tlcourse.interpret import cam_examples

    interp = _by_hand([0, 0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 2, 1, 1, 0, 1, 1])
    worst_first = [t.index for t in interp.top_losses(5, mistakes_only=True)]
    chosen = cam_examples(interp, 6)
    assert chosen[:3] == worst_first[:3]                                # half: the worst mistakes
    assert [int(interp.targets[i]) for i in chosen[3:]] == [0, 1, 0]    # then right answers, classes in turn
    everything = cam_examples(interp, 20)                               # fewer images than asked: all of them
    assert everything[:5] == worst_first and sorted(everything) == list(range(9))
