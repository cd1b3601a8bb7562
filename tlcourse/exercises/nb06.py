"""Checks for notebook 06 (saving and loading): a checkpoint with an extra field that resumes exactly,
and top-k predictions from logits."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from . import NotYet, check, require, run_learner


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _epoch(model, optimizer, data) -> None:
    model.train()
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@check
def resume_exactly(save, resume):
    """The learner's ``save(path, model, optimizer, epoch, note)`` and ``resume(path, model, optimizer)
    -> (epoch, note)``: epoch 1, saved, resumed into a fresh model, epoch 2, equals two epochs straight."""
    require(save=save, resume=resume)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 12, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(4)]
    straight, opt = _setup(0)
    for _ in range(2):
        _epoch(straight, opt, data)
    first, opt1 = _setup(0)
    _epoch(first, opt1, data)
    note = "lr 0.01, seed 0, ants vs bees"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        run_learner(save, path, first, opt1, 1, note, what="save")
        if not path.exists():
            raise NotYet("save wrote no file at path: torch.save(checkpoint_dict, path)")
        fresh, opt2 = _setup(1)  # another initialisation: only what resume loads may make it equal
        got = run_learner(resume, path, fresh, opt2, what="resume")
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise NotYet(f"resume must return (epoch, note), got {got!r}")
    epoch, got_note = got
    if epoch != 1:
        raise NotYet(f"resume returned epoch {epoch!r}: return the epoch stored in the checkpoint (1 here)")
    if got_note != note:
        raise NotYet(f"the extra field came back as {got_note!r}: store it in the checkpoint dict under its own key "
                     "and read it back")
    if not _same(fresh, first):
        raise NotYet("after resume the model differs from the saved one: save model.state_dict() and load it with "
                     "model.load_state_dict(...)")
    _epoch(fresh, opt2, data)
    if not _same(fresh, straight):
        raise NotYet("the model was restored, but the next epoch differs from an uninterrupted run: Adam keeps "
                     "moment estimates per parameter; save optimizer.state_dict() and restore it too")
    return ("saved after epoch 1 and resumed into a fresh model, epoch 2 equals two epochs in one go, bit for bit: "
            "weights, Adam's state and your note all came back")


@check
def top_k(fn):
    """The learner's ``top_k(logits, class_names, k) -> [(name, probability), ...]`` on one image's logits."""
    require(top_k=fn)
    names = ["cat", "dog", "fox", "owl"]
    logits = torch.tensor([0.5, 2.0, -1.0, 1.2])
    probs = torch.softmax(logits, 0)
    order = probs.argsort(descending=True).tolist()
    for k in (2, 10):
        try:
            got = run_learner(fn, logits.clone(), names, k, what="top_k")
        except NotYet as exc:
            if k > len(names):
                raise NotYet(f"with k={k} and {len(names)} classes: {exc}; k can be larger than the number of "
                             "classes, return them all then") from None
            raise
        try:
            pairs = [(str(name), float(p)) for name, p in got]
        except (TypeError, ValueError):
            raise NotYet(f"top_k must return a list of (class name, probability) pairs, got {got!r}") from None
        want = [(names[i], probs[i].item()) for i in order[:k]]
        if k > len(names) and len(pairs) != len(names):
            raise NotYet(f"with k={k} and {len(names)} classes, return all {len(names)} (k is at most the number "
                         f"of classes), not {len(pairs)}")
        if len(pairs) != len(want):
            raise NotYet(f"with k={k} you returned {len(pairs)} pairs")
        if any(p < 0 or p > 1 for _, p in pairs) or sum(p for _, p in pairs) > 1 + 1e-6:
            raise NotYet("those are logits, not probabilities: apply softmax over the classes first")
        if [p for _, p in pairs] != sorted((p for _, p in pairs), reverse=True):
            raise NotYet("the most likely class must come first: sort by probability, descending")
        if [n for n, _ in pairs] != [n for n, _ in want]:
            raise NotYet("a probability is paired with the wrong name: the i-th logit belongs to class_names[i]")
        if any(abs(p - q) > 1e-5 for (_, p), (_, q) in zip(pairs, want)):
            raise NotYet("the probabilities are off: softmax over all classes, before you keep the top k")
    return "softmax over all classes, sorted, cut at k (never more than the classes there are), names aligned"
