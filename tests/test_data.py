"""tlcourse.data and tlcourse.images: fetch from a mirror, transforms, loaders, RGB loading, summary.

Everything runs on archives and images generated here; only ``test_real_dataset`` needs the
real ants/bees dataset (skipped with the reason when it is unavailable).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from torchvision import transforms

from tlcourse import TLCourseError
from tlcourse.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MARKER,
    ImageFolderRGB,
    eval_transforms,
    fetch,
    make_loaders,
    summarize,
    train_transforms,
)
from tlcourse.images import open_rgb
from tlcourse.settings import ENV_DATA_MIRROR

# --------------------------------------------------------------------------- archives

def _zip_folder(src: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f.relative_to(src).as_posix())
    return archive


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path) -> Path:
    """A small valid hymenoptera_data.zip: 2 classes, 3 train + 2 val PNGs each."""
    src = tmp_path / "src"
    make_image_folder(src / "hymenoptera_data", per_class={"train": 3, "val": 2}, size=(24, 16))
    return _zip_folder(src, tmp_path / "hymenoptera_data.zip")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_fetch_from_local_mirror(tmp_path, archive):
    root = tmp_path / "data"
    path = fetch(root, str(archive), sha256=_sha256(archive), progress=False)
    assert path == root / "hymenoptera_data"
    assert (path / MARKER).is_file()
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*.png")) == sorted(
        f"{s}/{c}/img_{i}.png" for s, n in (("train", 3), ("val", 2)) for c in ("ants", "bees") for i in range(n))
    assert _leftovers(root) == ["hymenoptera_data"]  # no temporary folders left next to it


def test_fetch_without_checksum(tmp_path, archive):
    path = fetch(tmp_path / "data", str(archive), sha256=None, progress=False)
    assert (path / MARKER).is_file()


def test_fetch_via_file_url_uses_the_download_path(tmp_path, archive):
    path = fetch(tmp_path / "data", archive.as_uri(), sha256=_sha256(archive), progress=False)
    assert (path / "train" / "bees" / "img_2.png").is_file()
    assert _leftovers(tmp_path / "data") == ["hymenoptera_data"]


def test_second_fetch_is_a_no_op(tmp_path, archive, monkeypatch):
    root = tmp_path / "data"
    first = fetch(root, str(archive), sha256=None, progress=False)
    marker_mtime = (first / MARKER).stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("the archive was checked again")

    monkeypatch.setattr("tlcourse.download._check_archive", must_not_run)  # where fetch looks it up
    archive.unlink()  # the mirror is gone too: the complete copy must be enough
    assert fetch(root, str(archive), sha256=None, progress=False) == first
    assert (first / MARKER).stat().st_mtime_ns == marker_mtime


def test_force_refetches_over_a_complete_copy(tmp_path, archive):
    root = tmp_path / "data"
    path = fetch(root, str(archive), sha256=None, progress=False)
    (path / "train" / "ants" / "img_0.png").unlink()
    fetch(root, str(archive), sha256=None, force=True, progress=False)
    assert (path / "train" / "ants" / "img_0.png").is_file()
    assert _leftovers(root) == ["hymenoptera_data"]


def _truncated(archive: Path) -> Path:
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    return archive


def _bit_flipped(archive: Path) -> Path:
    """Flip bytes inside the first member's compressed data (the zip directory stays valid)."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[-1]  # a PNG (the first entries are folders)
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start + 2, start + info.compress_size - 2, 5):
        raw[offset] ^= 0x5A
    archive.write_bytes(bytes(raw))
    return archive


@pytest.mark.parametrize("damage", [_truncated, _bit_flipped], ids=["truncated", "bit-flipped"])
@pytest.mark.parametrize("with_checksum", [True, False], ids=["sha256", "no-sha256"])
def test_corrupt_archive_leaves_nothing_behind(tmp_path, archive, damage, with_checksum):
    good_sha = _sha256(archive)
    damage(archive)
    root = tmp_path / "data"
    with pytest.raises(TLCourseError) as info:
        fetch(root, str(archive), sha256=good_sha if with_checksum else None, progress=False)
    assert str(archive) in str(info.value)
    assert _leftovers(root) == []


def test_wrong_checksum_is_refused(tmp_path, archive):
    root = tmp_path / "data"
    with pytest.raises(TLCourseError, match="checksum mismatch"):
        fetch(root, str(archive), sha256="0" * 64, progress=False)
    assert _leftovers(root) == []


def test_archive_without_train_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src / "hymenoptera_data", per_class=1, splits=("val",))
    bad = _zip_folder(src, tmp_path / "hymenoptera_data.zip")
    root = tmp_path / "data"
    with pytest.raises(TLCourseError, match="hymenoptera_data/train/"):
        fetch(root, str(bad), sha256=None, progress=False)
    assert _leftovers(root) == []


def test_not_a_zip_is_refused(tmp_path):
    bad = tmp_path / "hymenoptera_data.zip"
    bad.write_text("<html>404 not found</html>")
    root = tmp_path / "data"
    with pytest.raises(TLCourseError, match="not a zip archive"):
        fetch(root, str(bad), sha256=None, progress=False)
    assert _leftovers(root) == []


def test_folder_without_marker_is_not_trusted(tmp_path, archive):
    root = tmp_path / "data"
    half = root / "hymenoptera_data" / "train" / "ants"
    half.mkdir(parents=True)
    (half / "partial.png").write_bytes(b"")
    with pytest.raises(TLCourseError, match="not completed by tlcourse"):
        fetch(root, str(archive), sha256=None, progress=False)
    assert (half / "partial.png").exists()  # nothing of the user's is deleted without force
    path = fetch(root, str(archive), sha256=None, force=True, progress=False)
    assert (path / MARKER).is_file() and not (half / "partial.png").exists()


def test_empty_leftover_folder_is_replaced(tmp_path, archive):
    root = tmp_path / "data"
    (root / "hymenoptera_data").mkdir(parents=True)
    path = fetch(root, str(archive), sha256=None, progress=False)
    assert (path / MARKER).is_file()


def test_missing_mirror_gives_clear_error(tmp_path):
    root = tmp_path / "data"
    missing = tmp_path / "nowhere" / "hymenoptera_data.zip"
    with pytest.raises(TLCourseError, match="does not exist") as info:
        fetch(root, str(missing), progress=False)
    assert str(missing) in str(info.value) and ENV_DATA_MIRROR in str(info.value)
    assert _leftovers(root) == []


def test_env_mirror_is_honoured(tmp_path, archive, monkeypatch):
    monkeypatch.setenv(ENV_DATA_MIRROR, str(archive))
    path = fetch(tmp_path / "data", sha256=_sha256(archive), progress=False)
    assert (path / MARKER).read_text().startswith(f"source={archive}")


# --------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("size", [224, 64])
def test_transform_output_shapes(size):
    img = Image.new("RGB", (300, 200), (120, 80, 40))
    assert train_transforms(size)(img).shape == (3, size, size)
    assert train_transforms(size, augment=False)(img).shape == (3, size, size)
    assert eval_transforms(size)(img).shape == (3, size, size)


def test_imagenet_normalisation():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    for tf in (train_transforms(64), eval_transforms(64)):
        norm = [t for t in tf.transforms if isinstance(t, transforms.Normalize)]
        assert len(norm) == 1 and tuple(norm[0].mean) == IMAGENET_MEAN and tuple(norm[0].std) == IMAGENET_STD
    # A picture of exactly the mean colour normalises to (almost) zero everywhere.
    mean_rgb = tuple(round(m * 255) for m in IMAGENET_MEAN)
    out = eval_transforms(64)(Image.new("RGB", (80, 80), mean_rgb))
    assert out.abs().max() < 0.01


def test_train_transforms_augment():
    """Two passes over the same image differ (random crop/flip/rotation); eval is deterministic."""
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    torch.manual_seed(0)
    assert not torch.equal(train_transforms(32)(img), train_transforms(32)(img))
    assert torch.equal(eval_transforms(32)(img), eval_transforms(32)(img))


# --------------------------------------------------------------------------- loaders

def test_make_loaders_classes_and_batches(tiny_data):
    loaders = make_loaders(tiny_data, image_size=32, batch_size=5, seed=0)
    assert loaders.class_names == ["ants", "bees"]
    assert loaders.image_size == 32 and loaders.data_dir == tiny_data
    assert len(loaders.train.dataset) == 12 and len(loaders.val.dataset) == 12
    images, labels = next(iter(loaders.train))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (5,) and set(labels.tolist()) <= {0, 1}
    sizes = [len(y) for _, y in loaders.val]
    assert sizes == [5, 5, 2]
    val_labels = torch.cat([y for _, y in loaders.val]).tolist()
    assert val_labels == [0] * 6 + [1] * 6  # validation is not shuffled


def _train_order(loaders) -> list[int]:
    return list(iter(loaders.train.sampler))


def test_seeded_shuffling(tiny_data):
    a = make_loaders(tiny_data, image_size=32, batch_size=4, seed=1, augment=False)
    b = make_loaders(tiny_data, image_size=32, batch_size=4, seed=1, augment=False)
    c = make_loaders(tiny_data, image_size=32, batch_size=4, seed=2, augment=False)
    assert _train_order(a) == _train_order(b)
    assert _train_order(a) != _train_order(c)
    assert sorted(_train_order(a)) == list(range(12))
    # The batches themselves come out identical for the same seed.
    xa, ya = next(iter(make_loaders(tiny_data, image_size=32, batch_size=4, seed=1, augment=False).train))
    xb, yb = next(iter(make_loaders(tiny_data, image_size=32, batch_size=4, seed=1, augment=False).train))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_subset_is_class_balanced_and_seeded(tiny_data):
    loaders = make_loaders(tiny_data, image_size=32, batch_size=8, subset=4, seed=0)
    for loader in (loaders.train, loaders.val):
        targets = [loader.dataset.dataset.targets[i] for i in loader.dataset.indices]
        assert targets == [0, 1, 0, 1]  # classes interleaved: a cut-short loader still sees both
    assert len(make_loaders(tiny_data, image_size=32, subset=3).train.dataset) == 3  # at most `subset`
    again = make_loaders(tiny_data, image_size=32, subset=4, seed=0)
    assert again.train.dataset.indices == loaders.train.dataset.indices
    assert len(make_loaders(tiny_data, image_size=32, subset=100).train.dataset) == 12  # larger: everything


def test_loader_opens_odd_images_as_rgb(tmp_path):
    root = make_image_folder(tmp_path / "odd", per_class=1, splits=("train",))
    Image.new("L", (30, 20), 128).save(root / "train" / "ants" / "grey.png")
    Image.new("RGBA", (30, 20), (10, 200, 10, 0)).save(root / "train" / "bees" / "alpha.png")
    dataset = ImageFolderRGB(root / "train", transform=eval_transforms(32))
    assert len(dataset) == 4
    for i in range(len(dataset)):
        image, _ = dataset[i]
        assert image.shape == (3, 32, 32)


# --------------------------------------------------------------------------- RGB loading

def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_palette_gif_with_transparency(tmp_path):
    img = Image.new("P", (20, 10), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 0, 20, 10))
    img.save(tmp_path / "p.gif", transparency=0)
    px = _pixels(open_rgb(tmp_path / "p.gif"))
    assert px.shape == (10, 20, 3)
    assert tuple(px[5, 2]) == (255, 255, 255)  # transparent: white background, not black
    assert tuple(px[5, 15]) == (200, 30, 30)


def test_grayscale_and_rgba(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "l.png")
    assert tuple(_pixels(open_rgb(tmp_path / "l.png"))[0, 0]) == (77, 77, 77)
    rgba = Image.new("RGBA", (8, 6), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 6))
    rgba.save(tmp_path / "a.png")
    px = _pixels(open_rgb(tmp_path / "a.png"))
    assert tuple(px[0, 0]) == (255, 255, 255) and tuple(px[0, 7]) == (0, 0, 255)


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    px = _pixels(open_rgb(tmp_path / "g16.png")).astype(int)
    assert px.min() == 0 and px.max() == 255
    assert 120 < px.mean() < 135  # a ramp stays a ramp; clipping would make it nearly all white
    mid = px[8, 32, 0]
    assert abs(mid - round(ramp[8, 32] / 257)) <= 1


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    r, g, b = _pixels(open_rgb(tmp_path / "c.jpg"))[6, 8].astype(int)
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = open_rgb(tmp_path / "r.jpg")
    assert out.size == (20, 40)
    px = _pixels(out).astype(int)
    assert px[5, 10].mean() > 200 and px[35, 10].mean() < 50  # the white half is now on top


# --------------------------------------------------------------------------- summary

def test_summarize_counts(tmp_path):
    root = make_image_folder(tmp_path / "ds", per_class={"train": 3, "val": 2}, size=(8, 8))
    (root / "train" / "ants" / ".hidden.png").write_bytes(b"")
    (root / "train" / "ants" / "._img_0.png").write_bytes(b"")  # macOS AppleDouble file
    (root / "train" / "ants" / "notes.txt").write_text("not an image")
    (root / "train" / "bees" / ".DS_Store").write_bytes(b"")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    summary = summarize(root)
    assert summary.counts == {"train": {"ants": 3, "bees": 3}, "val": {"ants": 2, "bees": 2}}
    assert summary.class_names == ["ants", "bees"]
    assert summary.total() == 10 and summary.total("train") == 6 and summary.total("val") == 4
    assert ("train", "ants", 3) in summary.rows()
    text = str(summary)
    assert "ants" in text and "(total)" in text and "classes: ants, bees" in text
    assert "<table>" in summary._repr_html_()


def test_loader_agrees_with_summary_on_hidden_files(tmp_path):
    """Hidden files and folders (AppleDouble ``._x.png``, ``.ipynb_checkpoints``) are not samples."""
    root = make_image_folder(tmp_path / "ds", per_class=2, size=(8, 8), splits=("train",))
    (root / "train" / "ants" / "._img_0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    dataset = ImageFolderRGB(root / "train")
    assert dataset.classes == ["ants", "bees"]
    assert len(dataset) == summarize(root, splits=("train",)).total() == 4


# --------------------------------------------------------------------------- the real dataset

@pytest.mark.slow
def test_real_dataset(hymenoptera_dir):
    summary = summarize(hymenoptera_dir)
    assert summary.total("train") == 245 and summary.total("val") == 153
    assert summary.class_names == ["ants", "bees"]
    for split, expected in (("train", 245), ("val", 153)):
        dataset = ImageFolderRGB(hymenoptera_dir / split)
        assert dataset.classes == ["ants", "bees"]
        assert len(dataset) == expected
        paths = [path for path, _ in dataset.samples]
        for path in paths:
            assert dataset.loader(path).mode == "RGB", path
    gif = hymenoptera_dir / "train" / "ants" / "imageNotFound.gif"
    assert str(gif) in [p for p, _ in ImageFolderRGB(hymenoptera_dir / "train").samples]
    assert open_rgb(gif).mode == "RGB"
