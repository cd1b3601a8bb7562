"""Grad-CAM: the peak sits where the evidence is, hooks and modes are left as found, bad cases explain themselves."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tlcourse import TLCourseError
from tlcourse.archs import ARCHS, ArchSpec
from tlcourse.data import make_loaders
from tlcourse.device import seed_everything
from tlcourse.freeze import apply_freeze, freeze_all
from tlcourse.gradcam import grad_cam, plot_grad_cam
from tlcourse.loops import evaluate, train_one_epoch
from tlcourse.models import build_model

SIDE = 128            # ResNet's layer4 is then 4x4: each quadrant of the image is 2x2 cells
QUADRANTS = [(0, 0), (0, 1), (1, 0), (1, 1)]


def make_quadrant_folder(root: Path, per_class: int = 16, side: int = SIDE, seed: int = 0) -> Path:
    """Two classes told apart only by a striped patch (horizontal vs vertical stripes) in one random quadrant.

    The rest is noise, plus a checkerboard patch (no orientation: no evidence) in another quadrant.
    The evidence quadrant is in the file name (``q01_3.png``: top row, right column).
    """
    rng = np.random.default_rng(seed)
    half, patch = side // 2, side * 3 // 8
    yy, xx = np.mgrid[0:patch, 0:patch]
    band = max(2, patch // 8)
    patterns = {"horizontal": (yy // band) % 2, "vertical": (xx // band) % 2, "check": (yy // band + xx // band) % 2}
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for cls in ("horizontal", "vertical"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(60, 196, (side, side, 3)).astype(np.uint8)
                quadrant = QUADRANTS[rng.integers(4)]
                others = [q for q in QUADRANTS if q != quadrant]
                for (row, col), pattern in ((others[rng.integers(3)], patterns["check"]), (quadrant, patterns[cls])):
                    y = row * half + rng.integers(0, half - patch + 1)
                    x = col * half + rng.integers(0, half - patch + 1)
                    pixels[y:y + patch, x:x + patch] = (pattern[..., None] * 180 + 40).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"q{quadrant[0]}{quadrant[1]}_{i}.png")
    return root


def quadrant_model(root: Path):
    """A ResNet-18 trained from scratch on the quadrant images until it gets every validation image right.

    (4 epochs: about 6 s on two idle CPU cores.)
    """
    make_quadrant_folder(root)
    seed_everything(0)
    loaders = make_loaders(root, image_size=SIDE, batch_size=8, augment=False, seed=0)
    model = apply_freeze(build_model("resnet18", 2, weights=None), "all")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(10):
        train_one_epoch(model, loaders.train, optimizer, loss_fn, torch.device("cpu"))
        if evaluate(model, loaders.val, loss_fn)["acc"] == 1.0:
            break
    assert evaluate(model, loaders.val, loss_fn)["acc"] == 1.0, "the quadrant task did not train"
    val = loaders.val.dataset
    images = torch.stack([val[i][0] for i in range(len(val))])
    quadrants = [tuple(int(c) for c in Path(p).name[1:3]) for p, _ in val.samples]
    return model.eval(), images, quadrants


def _quadrant_means(heatmap: torch.Tensor) -> dict[tuple[int, int], float]:
    half = heatmap.shape[0] // 2
    return {(r, c): heatmap[r * half:(r + 1) * half, c * half:(c + 1) * half].mean().item() for r, c in QUADRANTS}


def test_grad_cam_peaks_in_the_quadrant_that_holds_the_evidence(tmp_path):
    model, images, quadrants = quadrant_model(tmp_path)
    cam = grad_cam(model, images)
    assert cam.heatmaps.shape == (len(images), SIDE, SIDE) and cam.cams.shape[1:] == (4, 4)
    assert cam.layer == "layer4" and float(cam.heatmaps.min()) >= 0 and float(cam.heatmaps.max()) == 1.0
    assert sorted({q for q in quadrants}) == QUADRANTS, "the evidence moves around the validation images"
    for i, quadrant in enumerate(quadrants):
        row, col = cam.peak(i)
        assert (row >= SIDE // 2, col >= SIDE // 2) == tuple(bool(q) for q in quadrant), (i, quadrant, (row, col))
        means = _quadrant_means(cam.heatmaps[i])
        assert max(means, key=means.get) == quadrant   # the mass, not only the single brightest pixel


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_pytorch_grad_cam_agrees(arch):
    gradcam_lib = pytest.importorskip("pytorch_grad_cam", reason="grad-cam (pytorch-grad-cam) is not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = build_model(arch, 3, weights=None).eval()
    images = torch.randn(4, 3, SIDE, SIDE)
    ours = grad_cam(model, images, target=[0, 1, 2, 0])
    reference_model = copy.deepcopy(model)   # the library calls backward(), which fills .grad
    layer = reference_model.get_submodule(ours.layer)
    with gradcam_lib.GradCAM(model=reference_model, target_layers=[layer]) as method:
        theirs = method(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in ours.classes])
    assert sum(ours.empty) <= 1
    for i in range(len(images)):
        if ours.empty[i]:    # no positive evidence for that class anywhere: both maps are blank
            assert theirs[i].max() == 0
            continue
        correlation = np.corrcoef(ours.heatmaps[i].flatten().numpy(), theirs[i].flatten())[0, 1]
        assert correlation >= 0.99, (i, correlation)


def test_hooks_modes_gradients_and_statistics_are_left_as_found():
    torch.manual_seed(0)
    model = build_model("resnet18", 3, weights=None).train()
    images = torch.randn(3, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = grad_cam(model, images[:3])
    second = grad_cam(model, images[:3])
    assert torch.equal(first.heatmaps, second.heatmaps)                 # nothing accumulates between calls
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(m.training for m in model.modules())                     # train mode given back
    assert all(p.grad is None for p in model.parameters())              # no parameter gradient was made
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BatchNorm statistics too


def test_a_fully_frozen_model_and_a_single_logit_head_work():
    torch.manual_seed(0)
    model = freeze_all(build_model("resnet18", 2, weights=None, head="binary"))
    images = torch.randn(2, 3, 64, 64)
    positive, negative = grad_cam(model, images, target=1), grad_cam(model, images, target=0)
    assert positive.classes == [1, 1] and negative.classes == [0, 0]
    assert torch.allclose(positive.probs + negative.probs, torch.ones(2))
    # the class-0 score is minus the logit: its weights are negated, so the two maps never overlap
    assert not bool((positive.cams * negative.cams).any())
    assert any(not e for e in positive.empty + negative.empty)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_uses_its_cam_layer(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3, weights=None).eval()
    cam = grad_cam(model, torch.randn(2, 3, 64, 64), target="b", class_names=["a", "b", "c"])
    assert cam.layer == ARCHS[arch].cam_layer and cam.classes == [1, 1]
    assert cam.heatmaps.shape == (2, 64, 64) and cam.cams.shape[1:] == (2, 2)


def test_bad_models_and_targets_are_explained(monkeypatch):
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    model = build_model("resnet18", 2, weights=None)
    nn.init.zeros_(model.fc.weight)
    with pytest.raises(TLCourseError, match="do not depend on layer 'layer4' .*zero everywhere.*blank image"):
        grad_cam(model, images)
    model.fc = nn.Identity()
    with pytest.raises(TLCourseError, match=r"head \(fc\) has no parameters.*needs a classifier head"):
        grad_cam(model, images)
    model = build_model("resnet18", 2, weights=None)
    with pytest.raises(TLCourseError, match="has no layer 'layer9'.*conv1, bn1"):
        grad_cam(model, images, layer="layer9")
    with pytest.raises(TLCourseError, match="target='bee' is not a class name; the classes are ants, bees"):
        grad_cam(model, images, target="bee", class_names=["ants", "bees"])
    with pytest.raises(TLCourseError, match=r"target=5 is not a class index of this model \(0..1\)"):
        grad_cam(model, images, target=5)
    with pytest.raises(TLCourseError, match=r"images must be \(N, 3, H, W\)"):
        grad_cam(model, torch.randn(64, 64))
    with pytest.raises(TLCourseError, match="is not an architecture tlcourse knows"):
        grad_cam(nn.Sequential(nn.Conv2d(3, 2, 3)), images)
    spec = ARCHS["resnet18"]
    monkeypatch.setitem(ARCHS, "resnet18", ArchSpec(**{**spec.__dict__, "cam_layer": ""}))
    with pytest.raises(TLCourseError, match="resnet18 has no known Grad-CAM layer"):
        grad_cam(model, images)


def test_plot_marks_the_peak_and_says_when_there_is_no_evidence():
    torch.manual_seed(0)
    model = build_model("resnet18", 2, weights=None, head="binary")
    cam = grad_cam(model, torch.randn(2, 3, 64, 64), target=[0, 1])
    fig = plot_grad_cam(cam, titles=["a", "b"])
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert [t.startswith(x) for t, x in zip(titles, "ab")] == [True, True]
    assert [("no positive evidence" in t) for t in titles] == cam.empty
