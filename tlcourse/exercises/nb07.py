"""Checks for notebook 07 (your own images): count an ImageFolder like torchvision does, and the
majority-class baseline every result must beat; tried on a generated 3-class folder."""

from __future__ import annotations

import tempfile

from . import NotYet, check, require, run_learner
from ._data import image_folder

COUNTS = {"train": {"oak": 5, "maple": 3, "birch": 2}, "val": {"oak": 2, "maple": 4, "birch": 1}}


@check
def class_counts(fn):
    """The learner's ``class_counts(data_dir) -> {split: {class: images}}`` on a folder with traps."""
    require(class_counts=fn)
    with tempfile.TemporaryDirectory() as tmp:
        root = image_folder(tmp, COUNTS)
        got = run_learner(fn, root, what="class_counts")
    if not isinstance(got, dict):
        raise NotYet(f"class_counts must return a dict {{split: {{class: count}}}}, got {type(got).__name__}")
    for split, want in COUNTS.items():
        if split not in got:
            raise NotYet(f"there is no {split!r} entry: count both train/ and val/")
        have = {str(k): v for k, v in dict(got[split]).items()}
        if set(have) - set(want):
            extra = sorted(set(have) - set(want))[0]
            raise NotYet(f"{extra!r} is not a class: classes are the folders inside {split}/, not files")
        if set(want) - set(have):
            raise NotYet(f"class {sorted(set(want) - set(have))[0]!r} is missing in {split}: every folder is a class")
        diffs = {have[c] - want[c] for c in want}
        if diffs == {1}:
            raise NotYet("each class has one file too many: notes.txt is not an image; count image extensions only")
        if diffs == {2}:
            raise NotYet("you counted every file: notes.txt and the hidden .DS_Store are not images")
        if diffs == {-1}:
            raise NotYet("each class lacks one image: img0.JPG counts too, extensions are case-insensitive")
        if diffs != {0}:
            raise NotYet(f"the counts in {split} are off: count the image files (.jpg, .jpeg, .png...) of each folder")
    return "3 classes, 10 + 7 images: image files only, any case, no text or hidden files, as ImageFolder does"


@check
def majority_rate(fn):
    """The learner's ``majority_rate(data_dir) -> float``: the val accuracy of always answering the
    largest val class."""
    require(majority_rate=fn)
    with tempfile.TemporaryDirectory() as tmp:
        root = image_folder(tmp, COUNTS, extras=False)
        got = run_learner(fn, root, what="majority_rate")
    if not isinstance(got, int | float) or isinstance(got, bool):
        raise NotYet(f"majority_rate must return a number between 0 and 1, got {got!r}")
    val, train = COUNTS["val"], COUNTS["train"]
    if abs(got - 1 / len(val)) < 1e-9:
        raise NotYet("that is the rate of guessing at random (1 / classes); the baseline always answers the "
                     "largest class")
    if abs(got - max(train.values()) / sum(train.values())) < 1e-9:
        raise NotYet("you measured the train split: a baseline is measured on the images you validate on")
    if abs(got - max(val.values()) / sum(val.values())) > 1e-9:
        raise NotYet("not yet the share of the largest val class: count val images per class, divide the largest "
                     "count by all val images")
    return "4 of 7 val images are maple: a model must score above 0.571 here, not 0.5, before it has learned anything"
