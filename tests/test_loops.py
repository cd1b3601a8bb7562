"""``loops.fit`` for callers who build everything themselves, and what each epoch really ran."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlcourse import TLCourseError
from tlcourse.checkpoints import CheckpointSaver, load_checkpoint, model_from_checkpoint
from tlcourse.config import TrainConfig
from tlcourse.data import make_loaders
from tlcourse.engine import train
from tlcourse.freeze import apply_freeze
from tlcourse.loops import FitHooks, fit
from tlcourse.models import build_model
from tlcourse.optim import make_optimizer

FAST = dict(weights=None, batch_size=4, image_size=32, progress="none", device="cpu")


def _parts(data_dir, head="linear", **loader_kwargs):
    loaders = make_loaders(data_dir, image_size=32, batch_size=4, augment=False, **loader_kwargs)
    model = apply_freeze(build_model("resnet18", len(loaders.class_names), weights=None, head=head), "head")
    return loaders, model, make_optimizer(model, "adam", 1e-3)


def test_fit_with_a_saver_writes_a_loadable_run(tiny_data, tmp_path):
    """The documented path for callers who build things themselves (it used to raise KeyError: 'spec')."""
    loaders, model, optimizer = _parts(tiny_data)
    saver = CheckpointSaver(tmp_path, class_names=loaders.class_names, freeze="head", image_size=32)
    history = fit(model, loaders.train, loaders.val, optimizer, TrainConfig(epochs=2, **FAST), saver=saver,
                  generator=loaders.train.generator)
    assert [r["epoch"] for r in history] == [1, 2] and saver.saved_epoch == 2
    rebuilt = model_from_checkpoint(tmp_path / "latest.pt")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    assert load_checkpoint(tmp_path / "latest.pt")["class_names"] == loaders.class_names


def test_a_saver_needs_a_model_that_can_be_rebuilt(tiny_data, tmp_path):
    loaders, model, optimizer = _parts(tiny_data)
    del model.tlcourse_spec
    saver = CheckpointSaver(tmp_path, class_names=loaders.class_names, freeze="head", image_size=32)
    with pytest.raises(TLCourseError, match="build_model"):
        fit(model, loaders.train, loaders.val, optimizer, TrainConfig(epochs=1, **FAST), saver=saver)


def test_fit_picks_the_loss_from_the_head(tiny_data, monkeypatch):
    """A single-logit head trains with BCE even when no loss is passed (it used to get CrossEntropy)."""
    loaders, model, optimizer = _parts(tiny_data, head="binary")
    used = []
    real = nn.BCEWithLogitsLoss.forward
    monkeypatch.setattr(nn.BCEWithLogitsLoss, "forward", lambda self, *a: used.append(1) or real(self, *a))
    fit(model, loaders.train, loaders.val, optimizer, TrainConfig(epochs=1, **FAST))
    assert used


def test_max_batches_limits_the_batches_that_run(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), epochs=2, output_dir=str(tmp_path), max_batches=1, freeze="all",
                   **FAST)
    assert [r["train_images"] for r in result.history] == [4, 4]    # one batch of 4 per epoch, not 12 images
    assert [r["val_images"] for r in result.history] == [4, 4]
    full = train(data_dir=str(tiny_data), epochs=1, output_dir=str(tmp_path), freeze="all", **FAST)
    assert full.history[0]["train_images"] == 12 and full.history[0]["val_images"] == 12


def _flat(history):
    return [r[k] for r in history for k in ("train_loss", "val_loss")]


def test_cached_views_stay_in_step_across_resume(tiny_data, tmp_path):
    """Epoch e trains on view (e - 1) mod K in a resumed run as in an uninterrupted one."""
    common = dict(data_dir=str(tiny_data), output_dir=str(tmp_path), augment=True, fast_views=2, seed=2, **FAST)
    whole = train(epochs=3, **common)
    first = train(epochs=1, **common)
    resumed = train(resume=first.latest_path, epochs=3)
    assert whole.route == resumed.route == "views"
    assert _flat(resumed.history) == pytest.approx(_flat(whole.history), rel=1e-6)


def test_an_epoch_cut_short_does_not_shift_the_views(tiny_data, tmp_path, monkeypatch):
    """Every image of epoch 2 comes from view 1, although epoch 1 fetched only one batch.

    (Counting fetches per image, as the views once did, put the images epoch 1 skipped a view behind.)
    """
    from tlcourse import fast

    fetched = []
    real = fast.CachedViews.__getitem__

    def spy(self, index):
        item = real(self, index)
        fetched.append(next(k for k in range(len(self.views)) if torch.equal(item[0], self.views[k][index])))
        return item

    monkeypatch.setattr(fast.CachedViews, "__getitem__", spy)
    train(data_dir=str(tiny_data), output_dir=str(tmp_path), augment=True, fast_views=2, epochs=2, max_batches=1,
          **FAST)
    assert fetched == [0] * 4 + [1] * 4


def test_fit_numbers_epochs_by_the_run_and_calls_its_hooks(tiny_data):
    """One phase of a longer run: epochs 2..3 of 5, printed as such; the hooks see every epoch."""
    loaders, model, optimizer = _parts(tiny_data)
    calls = []

    class Hooks(FitHooks):
        def reduce_stats(self, stats):
            calls.append("reduce")
            return dict(stats, images=stats["images"] * 10)   # what a sum over processes would report

        def after_train(self, module):
            calls.append("after_train")

    lines = []
    history = fit(model, loaders.train, loaders.val, optimizer, TrainConfig(epochs=9, **FAST | {"progress": "epoch"}),
                  start_epoch=1, last=3, total=5, hooks=Hooks(), log=lines.append)
    assert [r["epoch"] for r in history] == [2, 3] and [line[:9] for line in lines] == ["EPOCH 2/5", "EPOCH 3/5"]
    assert calls == ["reduce", "after_train", "reduce"] * 2
    assert history[0]["val_images"] == 10 * len(loaders.val.dataset)
