"""Plausible wrong answers get the intended hint (never the answer), called on the checks directly.

Each case is (check, wrong answer builder, a phrase of the hint). The notebooks' solutions and
the untouched versions are tested in tests/test_exercises.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tlcourse.exercises import NotYet, Verdict, nb01, nb02, nb03, nb04, nb05, nb06, nb07, nb08
from tlcourse.freeze import keep_frozen_bn_in_eval
from tlcourse.models import build_model


def assert_hint(verdict: Verdict, phrase: str) -> None:
    assert verdict.status == "not yet", verdict.line
    assert phrase in verdict.message, verdict.line


# --------------------------------------------------------------------------- 01

def conv(a, b, k):
    return a * b * k * k


LAYER3_CONVS = conv(128, 256, 3) + 3 * conv(256, 256, 3)


@pytest.mark.parametrize("count, phrase", [
    (LAYER3_CONVS + conv(128, 256, 1), "convolutions only"),  # no BatchNorm
    (LAYER3_CONVS + 4 * 512, "downsample branch"),  # no shortcut
    (LAYER3_CONVS + conv(128, 256, 1) + 5 * 512 + 5 * 256, "bias=False"),  # conv biases
    (123, "too low"),
])
def test_01_stage_count(count, phrase):
    assert_hint(nb01.stage_count(count, "resnet18", "layer3"), phrase)


@pytest.mark.parametrize("head, count, phrase", [
    (nn.Sequential(nn.Linear(512, 5)), 2565, "hidden layer"),
    (nn.Sequential(nn.Linear(512, 64), nn.Linear(64, 5)), 33157, "non-linearity"),
    (nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1000)), 1, "out_features=5"),
    (nn.Sequential(nn.Linear(2048, 64), nn.ReLU(), nn.Linear(64, 5)), 1, "512 features"),
    (nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 5)), 512 * 64 + 64 * 5, "too low"),  # no biases
])
def test_01_mlp_head(head, count, phrase):
    assert_hint(nb01.mlp_head(head, count, in_features=512, num_classes=5), phrase)


# --------------------------------------------------------------------------- 02

def frozen_resnet(train=("layer3", "layer4", "fc"), bn_eval=True):
    model = build_model("resnet18", 2, weights=None)
    for name, p in model.named_parameters():
        p.requires_grad = name.split(".")[0] in train
    if bn_eval:
        keep_frozen_bn_in_eval(model)
    return model


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_02_freeze_hints():
    model = frozen_resnet(bn_eval=False)
    model.eval()  # eval once is not enough: the loop calls model.train()
    assert_hint(nb02.freeze_stages(model, torch.optim.SGD(trainable(model), lr=0.1)), "still change")
    model = frozen_resnet(train=("layer4", "fc"))
    assert_hint(nb02.freeze_stages(model, torch.optim.SGD(trainable(model), lr=0.1)), "is frozen but should train")
    model = frozen_resnet(train=("layer2", "layer3", "layer4", "fc"))
    assert_hint(nb02.freeze_stages(model, torch.optim.SGD(trainable(model), lr=0.1)), "should be frozen")
    model = frozen_resnet()
    assert_hint(nb02.freeze_stages(model, torch.optim.SGD(model.parameters(), lr=0.1)), "do not train")
    assert_hint(nb02.freeze_stages(model, torch.optim.SGD(model.fc.parameters(), lr=0.1)), "misses")


@pytest.mark.parametrize("fn, phrase", [
    (lambda m: (sum(1 for p in m.parameters() if p.requires_grad), sum(1 for _ in m.parameters())), "tensors"),
    (lambda m: (sum(p.numel() for p in m.parameters()),) * 2, "every parameter as trainable"),
    (lambda m: 5, "pair"),
    (lambda m: m.nope, "AttributeError"),  # the learner's exception becomes a hint, not a traceback
])
def test_02_count_trainable(fn, phrase):
    assert_hint(nb02.count_trainable(fn), phrase)


# --------------------------------------------------------------------------- 03

@pytest.fixture(scope="module")
def feats():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    from tlcourse.exercises._data import Features

    return Features(x[:24], y[:24], x[24:], y[24:], ["a", "b", "c"], 0.2, "synthetic")


def loop(*, zero=True, step=True, total="mean", train=True):
    def my_train_epoch(model, loader, optimizer, loss_fn):
        model.train(train)
        s, n, b = 0.0, 0, 0
        for x, y in loader:
            if zero:
                optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if step:
                optimizer.step()
            s, n, b = s + loss.item() * len(y), n + len(y), b + 1
        return {"mean": s / max(n, 1), "sum": s}[total]
    return my_train_epoch


def validate(*, no_grad=True, eval_mode=True):
    def my_validate(model, loader, loss_fn):
        model.train(not eval_mode)
        with torch.set_grad_enabled(not no_grad):
            out = [(model(x), y) for x, y in loader]
        n = sum(len(y) for _, y in out)
        loss = sum(loss_fn(o, y).item() * len(y) for o, y in out) / n
        return loss, sum((o.argmax(1) == y).sum().item() for o, y in out) / n
    return my_validate


@pytest.mark.parametrize("train_fn, val_fn, phrase", [
    (loop(zero=False), validate(), "zero_grad"),
    (loop(step=False), validate(), "optimizer.step()"),
    (loop(total="sum"), validate(), "sum of the per-image losses"),
    (loop(train=False), validate(), "model.train()"),
    (loop(), validate(no_grad=False), "torch.no_grad()"),
    (loop(), validate(eval_mode=False), "model.eval()"),
    (lambda *a: None, validate(), "returned None"),
])
def test_03_own_loop(feats, train_fn, val_fn, phrase):
    assert_hint(nb03.own_loop(train_fn, val_fn, feats), phrase)


def test_03_eval_transform():
    from torchvision import transforms as T

    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert_hint(nb03.eval_transform(T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor()]), 64), "[0, 1]")
    assert_hint(nb03.eval_transform(T.Compose([T.RandomResizedCrop(64), T.ToTensor(), norm]), 64), "deterministic")
    assert_hint(nb03.eval_transform(T.Compose([T.Resize(64), T.ToTensor(), norm]), 64), "centre square crop")
    assert_hint(nb03.eval_transform(T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), norm]), 64), "256/224")
    assert_hint(nb03.eval_transform(T.Compose([T.Resize(73), T.CenterCrop(64)]), 64), "ToTensor")


# --------------------------------------------------------------------------- 04

@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_04_deeper_unfreeze(arch):
    from tlcourse.archs import get_spec
    from tlcourse.freeze import set_trainable
    from tlcourse.optim import param_groups

    spec = get_spec(arch)
    before = nb04.block_before_last_stage(build_model(arch, 2, weights=None))
    model = set_trainable(build_model(arch, 2, weights=None), [before, *spec.last_stage, spec.head])
    same_rate = torch.optim.Adam(param_groups(model, 1e-4, head_lr_mult=10))
    assert_hint(nb04.deeper_unfreeze(model, same_rate, lr=1e-4, head_lr=1e-3), "not lower than the last stage")
    model = set_trainable(build_model(arch, 2, weights=None), [*spec.last_stage, spec.head])  # one block short
    assert_hint(nb04.deeper_unfreeze(model, torch.optim.Adam(trainable(model)), lr=1e-4, head_lr=1e-3), before)


def test_04_changed_blocks():
    from tlcourse.archs import block_of

    def changed(model, snap):
        return {block_of(k) for k, v in model.state_dict().items() if not torch.equal(v, snap[k])}

    assert_hint(nb04.changed_blocks(lambda m: m.state_dict(), changed), "clone")  # shares memory
    assert_hint(nb04.changed_blocks(lambda m: {k: v.clone() for k, v in m.state_dict().items()},
                                    lambda m, s: {k for k, v in m.state_dict().items() if not torch.equal(v, s[k])}),
                "block level")


# --------------------------------------------------------------------------- 05

def test_05_pick_lr():
    def minimum(lrs, losses):
        return lrs[min(range(len(losses)), key=losses.__getitem__)]

    assert_hint(nb05.pick_lr(minimum), "about to blow up")
    assert_hint(nb05.pick_lr(lambda lrs, losses: lrs[0]), "still flat")
    lrs, losses = nb05.lr_curve(1e-3, 3e-2)
    assert len(lrs) == len(losses) == 100 and min(losses) < losses[0] < losses[-1]


def test_05_discriminative_groups():
    from tlcourse.freeze import blocks

    model = build_model("mobilenet_v2", 2, weights=None)
    parts = list(blocks(model).values())
    two_rates = [{"params": [p for m in parts[:-1] for p in m.parameters()], "lr": 5e-5},
                 {"params": list(parts[-1].parameters()), "lr": 1e-3}]
    assert_hint(nb05.discriminative_groups(model, two_rates, 5e-5, 20), "only two rates")
    falling = [{"params": list(m.parameters()), "lr": 1e-3 * 20 ** (-i / (len(parts) - 1))}
               for i, m in enumerate(parts)]
    assert_hint(nb05.discriminative_groups(model, falling, 5e-5, 20), "first block")
    assert_hint(nb05.discriminative_groups(model, two_rates[1:], 5e-5, 20), "in no group")
    assert math.isclose(5e-5 * 20, 1e-3)


# --------------------------------------------------------------------------- 06

def save(path, model, optimizer, epoch, note, with_optimizer=True):
    ckpt = {"model": model.state_dict(), "epoch": epoch, "note": note}
    if with_optimizer:
        ckpt["optimizer"] = optimizer.state_dict()
    torch.save(ckpt, path)


def resume(path, model, optimizer, load_model=True):
    ckpt = torch.load(path, weights_only=True)
    if load_model:
        model.load_state_dict(ckpt["model"])
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["epoch"], ckpt["note"]


def test_06_resume_exactly():
    assert nb06.resume_exactly(save, resume).ok
    assert_hint(nb06.resume_exactly(lambda *a: save(*a, with_optimizer=False), resume), "optimizer.state_dict()")
    assert_hint(nb06.resume_exactly(save, lambda *a: resume(*a, load_model=False)), "load_state_dict")
    assert_hint(nb06.resume_exactly(save, lambda *a: (resume(*a)[0], None)), "extra field")
    assert_hint(nb06.resume_exactly(lambda *a: None, resume), "no file")


def test_06_top_k():
    def logits_not_probs(logits, names, k):
        v, i = logits.topk(min(k, len(names)))
        return [(names[j], p) for p, j in zip(v.tolist(), i.tolist())]

    def unsorted(logits, names, k):
        p = torch.softmax(logits, 0)
        return [(names[j], p[j].item()) for j in range(min(k, len(names)))]

    def no_clamp(logits, names, k):
        v, i = torch.softmax(logits, 0).topk(k)  # fails for k > classes
        return [(names[j], p) for p, j in zip(v.tolist(), i.tolist())]

    assert_hint(nb06.top_k(logits_not_probs), "softmax")
    assert_hint(nb06.top_k(unsorted), "sort by probability")
    assert_hint(nb06.top_k(no_clamp), "return them all")


# --------------------------------------------------------------------------- 07

def test_07_class_counts():
    from pathlib import Path

    def every_file(d):
        return {s: {c.name: len(list(c.iterdir())) for c in (Path(d) / s).iterdir()} for s in ("train", "val")}

    def lower_only(d):
        return {s: {c.name: len(list(c.glob("*.jpg"))) for c in (Path(d) / s).iterdir()} for s in ("train", "val")}

    assert_hint(nb07.class_counts(every_file), "hidden .DS_Store")
    assert_hint(nb07.class_counts(lower_only), "case-insensitive")
    assert_hint(nb07.class_counts(lambda d: {"train": {}}), "is missing")


def test_07_majority_rate():
    assert_hint(nb07.majority_rate(lambda d: 1 / 3), "guessing at random")
    assert_hint(nb07.majority_rate(lambda d: 0.5), "train split")


# --------------------------------------------------------------------------- 08

def test_08_most_confused():
    names = ["ant", "bee", "wasp"]
    assert_hint(nb08.most_confused(lambda t, p, n: (n[1], n[0], 3)), "swapped")
    assert_hint(nb08.most_confused(lambda t, p, n: ("ant", "ant", 6)), "diagonal")
    assert_hint(nb08.most_confused(lambda t, p, n: ("ant", "bee", 4)), "both directions")
    assert names == nb08.CLASSES


def cam(relu=True, scale=True, weigh="grad"):
    def my_grad_cam(model, image, target, layer):
        kept = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.update(a=o))
        model.eval()
        score = model(image[None])[0, target]
        handle.remove()
        (grad,) = torch.autograd.grad(score, kept["a"])
        a = kept["a"].detach()
        w = grad.mean(dim=(2, 3), keepdim=True) if weigh == "grad" else a.mean(dim=(2, 3), keepdim=True)
        m = (w * a).sum(dim=1)[0]
        m = torch.relu(m) if relu else m
        m = nb08.upsample(m, image.shape[-2:])
        return m / m.abs().max() if scale else m
    return my_grad_cam


@pytest.mark.parametrize("fn, phrase", [
    (cam(relu=False), "ReLU"),
    (cam(scale=False), "scale it to [0, 1]"),
    (cam(weigh="activations"), "mean of its gradient"),
    (lambda model, image, target, layer: torch.ones(7, 7), "upsample"),
])
def test_08_grad_cam(fn, phrase):
    assert_hint(nb08.grad_cam_by_hand(fn, "resnet18"), phrase)


def test_08_grad_cam_reference_passes_on_mobilenet():
    assert nb08.grad_cam_by_hand(cam(), "mobilenet_v2").ok


def test_nbgrader_execution_turns_a_hint_into_a_failed_test(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(AssertionError, match="not attempted"):
        nb07.majority_rate(None)
    with pytest.raises(AssertionError, match="not yet"):
        nb07.majority_rate(lambda d: 1 / 3)
    assert nb07.majority_rate(lambda d: 4 / 7).ok
    assert issubclass(NotYet, Exception)
