"""The fast paths train exactly what the plain loop trains, only without recomputing frozen layers."""

from __future__ import annotations

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.archs import ARCHS
from tlcourse.checkpoints import load_checkpoint, model_from_checkpoint
from tlcourse.data import make_loaders
from tlcourse.engine import TrainConfig, evaluate, train
from tlcourse.fast import (
    CachedViews,
    DecodedImages,
    SampleViews,
    cache_bytes_estimate,
    compute_cache,
    prefix_problem,
    split_model,
)
from tlcourse.freeze import apply_freeze
from tlcourse.models import build_model

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_checkpoint_files(monkeypatch):
    """Trajectory tests do not need the 45 MB ResNet-18 checkpoints fsync'ed every epoch."""
    monkeypatch.setattr("tlcourse.checkpoints.save_checkpoint_as", lambda checkpoint, paths: None)


def _config(data_dir, tmp_path, **overrides) -> TrainConfig:
    values = dict(data_dir=str(data_dir), arch="resnet18", weights=None, image_size=SIZE, augment=False,
                  epochs=2, batch_size=4, lr=1e-3, seed=3, device="cpu", progress="none",
                  output_dir=str(tmp_path / "runs"),
                  backbone_runtime="torch")   # caching itself is exact; ONNX Runtime: tests/test_backbone_runtime.py
    values.update(overrides)
    return TrainConfig(**values)


def _losses(result) -> list[float]:
    return [row[k] for row in result.history for k in ("train_loss", "val_loss")]


def _assert_same_trajectory(fast, plain, rel=1e-4):
    assert fast.route != "plain" and plain.route == "plain"
    assert _losses(fast) == pytest.approx(_losses(plain), rel=rel)
    assert [r["val_acc"] for r in fast.history] == [r["val_acc"] for r in plain.history]


@pytest.mark.parametrize("arch,freeze,expected", [
    ("resnet18", "head", "features"),
    ("resnet18", "last_stage", "layer3"),
    ("mobilenet_v2", "head", "features"),
    ("mobilenet_v2", "last_stage", "layer3"),
])
def test_cached_training_follows_the_plain_loss_trajectory(tiny_data_session, tmp_path, no_checkpoint_files,
                                                           arch, freeze, expected):
    # fp32 cache: the comparison isolates the caching itself from fp16 rounding.
    cfg = _config(tiny_data_session, tmp_path, arch=arch, freeze=freeze, fast_dtype="float32",
                  head="mlp" if freeze == "head" else "linear")   # mlp: dropout must draw the same numbers
    plain = train(cfg, fast="off")
    fast = train(cfg)                                               # fast="auto"
    assert fast.route == expected
    assert fast.route_description.startswith("cached ")
    _assert_same_trajectory(fast, plain)
    # The trained weights are the same too, including BatchNorm statistics of a trained layer4.
    for (name, a), b in zip(fast.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5), name
    # What interpret reuses: the pooled validation features, only where the route cached pooled features.
    pooled = fast.fast.pooled_val_features()
    if expected == "features":
        features, targets = pooled
        assert features.shape == (len(targets), ARCHS[arch].feature_dim)
        assert targets.tolist() == [t for _, t in make_loaders(tiny_data_session).val.dataset.samples]
    else:
        assert pooled is None


def test_fp16_layer3_cache_stays_close_to_the_plain_loop(tiny_data_session, tmp_path, no_checkpoint_files):
    model = apply_freeze(build_model("resnet18", 2, weights=None), "last_stage")
    dataset = make_loaders(tiny_data_session, image_size=SIZE, augment=False).train.dataset
    prefix = split_model(model, "layer3").prefix
    full, _ = compute_cache(prefix, dataset, dtype=torch.float32)
    half, _ = compute_cache(prefix, dataset, dtype=torch.float16)
    assert (half.float() - full).abs().max() <= 1e-3 * full.abs().max()   # fp16: 11 significant bits
    cfg = _config(tiny_data_session, tmp_path, freeze="last_stage")
    plain, fast = train(cfg, fast="off"), train(cfg)
    assert fast.route == "layer3" and "fp16" in fast.route_description
    # Rounding differences grow a little over the training steps but stay small.
    assert _losses(fast) == pytest.approx(_losses(plain), abs=0.1)


def test_fast_checkpoint_is_a_full_model_with_the_same_accuracy(tiny_data_session, tmp_path):
    result = train(_config(tiny_data_session, tmp_path, freeze="last_stage", fast_dtype="float32"))
    assert result.route == "layer3"
    loaders = make_loaders(tiny_data_session, image_size=SIZE, batch_size=4, augment=False)
    reloaded = model_from_checkpoint(result.latest_path)
    in_memory = evaluate(result.model, loaders.val)["acc"]
    assert evaluate(reloaded, loaders.val)["acc"] == in_memory == result.history[-1]["val_acc"]
    checkpoint = load_checkpoint(result.latest_path)
    assert checkpoint["config"]["route"] == "layer3"
    assert all(row["route"] == "layer3" for row in result.history)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("point", ["features", "layer3"])
def test_cache_memory_estimate_matches_the_real_cache(tiny_data_session, arch, point):
    """``prepare`` decides from the estimate whether a cache fits; it must equal what is stored."""
    model = apply_freeze(build_model(arch, 2, weights=None), "last_stage" if point == "layer3" else "head")
    loaders = make_loaders(tiny_data_session, image_size=SIZE, batch_size=4, augment=False)
    dtype = torch.float16 if point == "layer3" else torch.float32
    cached, targets = compute_cache(split_model(model, point).prefix, loaders.train.dataset, dtype=dtype)
    n = len(loaders.train.dataset)
    assert cached.numel() * cached.element_size() == cache_bytes_estimate(ARCHS[arch], n, SIZE, point, dtype)
    assert targets.tolist() == [t for _, t in loaders.train.dataset.samples]
    if point == "layer3" and arch == "resnet18":
        assert cached.shape == (n, 256, SIZE // 16, SIZE // 16) and cached.dtype == torch.float16
        # The whole ants/bees dataset (245 + 153 images) at 224 px fits the 120 MB budget.
        assert cache_bytes_estimate(ARCHS[arch], 398, 224, point, dtype) == 398 * 256 * 14 * 14 * 2 <= 120e6


def test_auto_falls_back_to_the_plain_loop_when_caching_would_change_results(tiny_data_session, tmp_path,
                                                                             no_checkpoint_files):
    augmented = train(_config(tiny_data_session, tmp_path, epochs=1, augment=True, fast_views=0))
    assert augmented.route == "plain" and "augmentation" in augmented.route_description
    moving_bn = train(_config(tiny_data_session, tmp_path, epochs=1, bn_eval=False))
    assert moving_bn.route == "plain" and "bn_eval=False" in moving_bn.route_description
    with pytest.raises(TLCourseError, match="fast='features' cannot cache"):
        train(_config(tiny_data_session, tmp_path, epochs=1, bn_eval=False, fast="features"))
    with pytest.raises(TLCourseError, match="fast_views"):
        train(_config(tiny_data_session, tmp_path, epochs=1, augment=True, fast="features", fast_views=0))


def test_prefix_problem_sees_trainable_or_moving_layers():
    model = build_model("resnet18", 2, weights=None)
    apply_freeze(model, "last_stage")
    assert prefix_problem(split_model(model, "layer3").prefix) is None
    assert "layer" in prefix_problem(split_model(model, "features").prefix)   # layer4 is trainable


def test_augmentation_is_cached_as_views_by_default(tiny_data_session, tmp_path, no_checkpoint_files):
    """Fast by default: augment=True (the default) trains head or last_stage on cached views."""
    for freeze, what in (("head", "pooled features"), ("last_stage", "layer3 activations (fp16)")):
        result = train(_config(tiny_data_session, tmp_path, epochs=1, augment=True, freeze=freeze))
        assert result.route == "views" and result.route_description.startswith(f"cached {what} of ")
        views = TrainConfig(freeze=freeze).resolved().fast_views
        described = f"{views} views per training image" if views > 1 else "the un-augmented images"
        assert described in result.route_description
        assert result.probe is not None and 0 <= result.probe.val_acc <= 1
    everything = train(_config(tiny_data_session, tmp_path, epochs=1, augment=True, freeze="all"))
    assert everything.route == "plain" and everything.probe is None


def test_augmented_views_are_seeded_and_cycle(tiny_data_session, tmp_path, no_checkpoint_files):
    cfg = _config(tiny_data_session, tmp_path, epochs=3, augment=True, fast_views=2, cache=False)
    first, second = train(cfg), train(cfg)
    assert first.route == "views" and "2 views per training image" in first.route_description
    assert _losses(first) == _losses(second)
    # view 0 is the un-augmented image (what validation sees); view 1 is a seeded augmentation
    loaders = make_loaders(tiny_data_session, image_size=SIZE, augment=True)
    samples, train_tf = loaders.train.dataset.samples, loaders.train.dataset.transform
    clean = SampleViews(samples, loaders.val.dataset.transform)
    assert torch.equal(clean[0][0], make_loaders(tiny_data_session, image_size=SIZE, augment=False).train.dataset[0][0])
    view1, again = SampleViews(samples, train_tf, seed=3, view=1), SampleViews(samples, train_tf, seed=3, view=1)
    assert torch.equal(view1[5][0], again[5][0]) and not torch.equal(view1[5][0], view1[4][0])
    assert not torch.equal(view1[5][0], SampleViews(samples, train_tf, seed=3, view=2)[5][0])
    views = CachedViews(torch.arange(6.0).view(2, 3), torch.zeros(3, dtype=torch.long))
    seen = []
    for epoch in (1, 2, 3):
        views.set_epoch(epoch)
        seen.append([views[i][0].item() for i in range(3)])
    assert seen == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]


def test_decoded_images_equal_the_pil_pipeline(tiny_data_session):
    loaders = make_loaders(tiny_data_session, image_size=SIZE, batch_size=4, augment=False)
    decoded = DecodedImages(loaders.val.dataset.samples, SIZE, augment=False)
    for i in range(len(decoded)):
        assert torch.equal(decoded[i][0], loaders.val.dataset[i][0])
    assert decoded.nbytes == len(decoded) * 3 * SIZE * SIZE
    augmented = DecodedImages(loaders.train.dataset.samples, SIZE, augment=True)
    assert augmented[0][0].shape == (3, SIZE, SIZE) and augmented[0][0].dtype == torch.float32


def test_all_layers_trainable_without_augmentation_decodes_once(tiny_data_session, tmp_path, no_checkpoint_files):
    cfg = _config(tiny_data_session, tmp_path, freeze="all", epochs=2)
    plain, fast = train(cfg, fast="off"), train(cfg)
    assert fast.route == "decode" and fast.route_description.startswith("images decoded once")
    _assert_same_trajectory(fast, plain)
