"""Round three, case 6: a resumed run trains with the rates its checkpoints record, in every recipe."""

from __future__ import annotations

import pytest
from conftest import interrupt_after, make_image_folder

from tlcourse.checkpoints import load_checkpoint
from tlcourse.engine import train

FAST = dict(weights=None, batch_size=4, image_size=32, progress="none", augment=False, arch="resnet18", seed=5)


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("leaves"), classes=("healthy", "rust", "scab"),
                             per_class={"train": 4, "val": 2}, size=(36, 44))


@pytest.mark.parametrize("recipe, stop_after", [("fine_tune", 2), ("fine_tune", 1), ("single", 1)],
                         ids=["fine_tune_inside_phase_2", "fine_tune_inside_phase_1", "single"])
def test_a_resume_with_a_new_lr_trains_at_it_and_records_it(leaves, tmp_path, monkeypatch, recipe, stop_after):
    extra = (dict(recipe="fine_tune", epochs=3, freeze_epochs=1 if stop_after == 2 else 2) if recipe == "fine_tune"
             else dict(epochs=3, scheduler="cosine", freeze="last_stage"))
    common = dict(data_dir=str(leaves), **FAST, **extra)
    new_lr = 4e-3
    reference = train(output_dir=str(tmp_path / "ref"), lr=new_lr, **common)   # the whole run at the new rate
    interrupt_after(monkeypatch, stop_after, output_dir=str(tmp_path / "run"), lr=1e-3, **common)
    (run_dir,) = (tmp_path / "run").iterdir()
    resumed = train(resume=run_dir / "latest.pt", lr=new_lr)
    after = [row["lr"] for row in resumed.history[stop_after:]]
    assert after == pytest.approx([row["lr"] for row in reference.history[stop_after:]], rel=1e-12)
    assert after != pytest.approx([row["lr"] for row in resumed.history[:stop_after]][-1:] * len(after))
    latest = load_checkpoint(resumed.latest_path)
    assert latest["config"]["lr"] == new_lr
    expected = load_checkpoint(reference.latest_path)["optimizer"]["param_groups"]
    peaks = [g["initial_lr"] for g in latest["optimizer"]["param_groups"]]
    assert peaks == pytest.approx([g["initial_lr"] for g in expected], rel=1e-12)


def test_a_refused_fine_tune_resume_names_the_setting_that_changed(leaves, tmp_path):
    from tlcourse import TLCourseError

    run = train(data_dir=str(leaves), output_dir=str(tmp_path), recipe="fine_tune", epochs=2, freeze_epochs=1,
                **FAST)
    with pytest.raises(TLCourseError, match=r"belongs to the 'all' phase; resume with the run's unfreeze='last_stage'"):
        train(resume=run.latest_path, unfreeze="all", epochs=3)
    with pytest.raises(TLCourseError, match=r"belongs to the 'head' phase; resume with the run's freeze_epochs=1"):
        train(resume=run.latest_path, freeze_epochs=2, epochs=3)
