"""Bad and unusual image files: found by the check, refused or skipped by the loaders, and never
an opaque traceback from a DataLoader worker.

All files are generated here with PIL or raw bytes; the decompression-bomb limits are lowered
with ``monkeypatch`` instead of writing a giant file.
"""

from __future__ import annotations

import gc
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from tlcourse import TLCourseError
from tlcourse.checks import ImageLoadError, check_dataset, inspect_image
from tlcourse.data import make_loaders
from tlcourse.images import open_rgb


def noise_rgb(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


# --------------------------------------------------------------------------- bad files

def write_truncated_jpeg(path):
    data = jpeg_bytes(noise_rgb())
    path.write_bytes(data[: len(data) // 2])


def write_zero_bytes(path):
    path.write_bytes(b"")


def write_text_named_jpg(path):
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")


def write_random_bytes(path):
    path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)))


BAD = {
    "truncated.jpg": (write_truncated_jpeg, "truncated or corrupt image"),
    "empty.jpg": (write_zero_bytes, "empty file (0 bytes)"),
    "page.jpg": (write_text_named_jpg, "a text file (HTML page? error message?) with an image name, not an image"),
    "garbage.jpg": (write_random_bytes, "not an image PIL can read (2048 bytes, unknown format)"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_image_is_an_error_naming_the_file(tiny_data, name):
    write, expected = BAD[name]
    write(tiny_data / "train" / "bees" / name)
    check = check_dataset(tiny_data)
    assert [(p.severity, p.path) for p in check.problems] == [("error", f"train/bees/{name}")]
    assert expected in check.errors[0].message
    assert check.bad_files == [f"train/bees/{name}"]

    with pytest.raises(TLCourseError) as info:
        make_loaders(tiny_data, image_size=32, batch_size=4)
    message = str(info.value)
    assert "\n" not in message
    assert str(tiny_data / "train" / "bees" / name) in message and expected in message
    assert "bad_images='skip'" in message


def test_error_names_the_first_bad_file_and_counts_the_rest(tiny_data):
    for name in BAD:
        BAD[name][0](tiny_data / "val" / "ants" / name)
    with pytest.raises(TLCourseError, match=r"val/ants/\w+\.jpg: .*\(and 3 more; `python -m tlcourse data --check"):
        make_loaders(tiny_data, image_size=32, batch_size=4)


def test_skip_policy_drops_bad_files_with_one_warning(tiny_data):
    for name in BAD:
        BAD[name][0](tiny_data / "train" / "ants" / name)
    write_truncated_jpeg(tiny_data / "val" / "bees" / "cut.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaders = make_loaders(tiny_data, image_size=32, batch_size=4, bad_images="skip")
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1
    assert str(ours[0].message).startswith(f"skipped 5 unreadable image(s) in {tiny_data}")
    assert sorted(p.name for p in loaders.skipped) == sorted([*BAD, "cut.jpg"])
    assert len(loaders.train.dataset) == 12 and len(loaders.val.dataset) == 12
    assert loaders.check is not None and len(loaders.check.bad_files) == 5
    images, labels = next(iter(loaders.train))  # every remaining file loads
    assert images.shape == (4, 3, 32, 32)


def test_skip_policy_still_refuses_structural_problems(tiny_data):
    (tiny_data / "val" / "bees").rename(tiny_data / "val" / "wasps")
    with pytest.raises(TLCourseError, match="class folders differ"):
        make_loaders(tiny_data, image_size=32, batch_size=4, bad_images="skip")


def test_skip_policy_refuses_a_class_with_no_readable_image(tiny_data):
    for f in (tiny_data / "val" / "bees").iterdir():
        f.write_bytes(b"")
    with pytest.raises(TLCourseError, match=r"val/bees: every image of this class is unreadable"):
        make_loaders(tiny_data, image_size=32, batch_size=4, bad_images="skip")


# --------------------------------------------------------------------------- files that are fine

def write_palette_gif(path):
    img = noise_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(path, transparency=0)


def write_grayscale(path):
    noise_rgb().convert("L").save(path)


def write_rgba(path):
    img = noise_rgb().convert("RGBA")
    img.putalpha(Image.new("L", img.size, 0))  # fully transparent: must come out white
    img.save(path)


def write_cmyk_jpeg(path):
    path.write_bytes(jpeg_bytes(noise_rgb().convert("CMYK")))


def write_16bit_png(path):
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    img = Image.fromarray(ramp)  # uint16 → mode "I;16"
    assert img.mode == "I;16"
    img.save(path)


def write_exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path.write_bytes(jpeg_bytes(noise_rgb((64, 48)), exif=exif.tobytes()))


FINE = {
    "palette.gif": (write_palette_gif, "P"),
    "gray.png": (write_grayscale, "L"),
    "rgba.png": (write_rgba, "RGBA"),
    "cmyk.jpg": (write_cmyk_jpeg, "CMYK"),
    "deep.png": (write_16bit_png, "I;16"),
    "rotated.jpg": (write_exif_rotated, "RGB"),
}


@pytest.mark.parametrize("name", list(FINE))
def test_unusual_images_load_without_problem(tmp_path, name):
    write, mode = FINE[name]
    path = tmp_path / name
    write(path)
    report = inspect_image(path)
    assert report.severity is None and report.mode == mode
    img = open_rgb(path)
    assert img.mode == "RGB"
    pixels = np.asarray(img)
    if name == "rotated.jpg":
        assert report.rotated and img.size == (48, 64)  # turned upright
    if name == "rgba.png":
        assert (pixels == 255).all()  # transparent → white background
    if name == "deep.png":
        # rescaled, not clipped
        assert pixels.min() == 0 and 240 <= pixels.max() <= 255 and len(np.unique(pixels)) > 100


def test_unusual_images_in_a_dataset_are_counted_not_reported(tiny_data):
    for name, (write, _mode) in FINE.items():
        write(tiny_data / "train" / "ants" / name)
    check = check_dataset(tiny_data)
    assert check.problems == []
    assert check.modes == {"RGB": 24 + 1, "P": 1, "L": 1, "RGBA": 1, "CMYK": 1, "I;16": 1}
    assert check.exif_rotated == 1
    assert "converted to RGB on load (fine): CMYK 1, I;16 1, L 1, P 1, RGBA 1, EXIF-rotated 1" in str(check)
    loaders = make_loaders(tiny_data, image_size=32, batch_size=18, augment=False)
    images, _ = next(iter(loaders.train))
    assert images.shape == (18, 3, 32, 32)


# --------------------------------------------------------------------------- very large images

def test_decompression_bomb_warning_limit_is_a_warning(tiny_data, monkeypatch):
    """Over MAX_IMAGE_PIXELS PIL warns but loads: the check warns and training goes on."""
    noise_rgb((64, 48)).save(tiny_data / "train" / "ants" / "huge.png")  # 3072 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 40x32 = 1280 px files stay under
    check = check_dataset(tiny_data)
    assert [(p.severity, p.path) for p in check.problems] == [("warning", "train/ants/huge.png")]
    assert "very large image (64x48 = 3,072 px, over PIL's decompression-bomb warning limit of 2,000 px)" \
        in check.warnings[0].message
    assert "downscale it" in check.warnings[0].message
    assert check.ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert len(make_loaders(tiny_data, image_size=32, batch_size=4).train.dataset) == 13


def test_decompression_bomb_error_limit_is_an_error(tiny_data, monkeypatch):
    """Over 2 x MAX_IMAGE_PIXELS PIL refuses to open the file: an error (or skipped)."""
    noise_rgb((64, 64)).save(tiny_data / "val" / "bees" / "bomb.png")  # 4096 px > 2 * 1500
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    check = check_dataset(tiny_data)
    assert [(p.severity, p.path) for p in check.problems] == [("error", "val/bees/bomb.png")]
    assert "image too large to open" in check.errors[0].message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in check.errors[0].message
    with pytest.raises(TLCourseError, match="bomb.png: image too large to open"):
        make_loaders(tiny_data, image_size=32, batch_size=4)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        loaders = make_loaders(tiny_data, image_size=32, batch_size=4, bad_images="skip")
    assert [p.name for p in loaders.skipped] == ["bomb.png"]


# --------------------------------------------------------------------------- failures during training

# torch's worker shutdown after a worker error logs "Exception in thread QueueFeederThread" and
# takes ~5 s (a torch DataLoader behaviour, also with persistent_workers=False); see docs/robustness.md.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_file_during_training_is_one_line(tiny_data, num_workers):
    """Without the check (or with a file changed after it), the error still names the file in one line."""
    bad = tiny_data / "train" / "ants" / "img_3.png"
    loaders = make_loaders(tiny_data, image_size=32, batch_size=24, num_workers=num_workers, augment=False)
    bad.write_bytes(bad.read_bytes()[:60])  # damaged after the check
    with pytest.raises(TLCourseError) as info:
        for _ in loaders.train:
            pass
    assert isinstance(info.value, ImageLoadError)
    message = str(info.value)
    assert "\n" not in message and "worker" not in message
    assert message.startswith(f"{bad}: truncated or corrupt image")
    del loaders, info  # shut the persistent workers down here, not in whichever test runs next
    gc.collect()


def test_verify_off_finds_nothing_until_loading(tiny_data):
    write_text_named_jpg(tiny_data / "val" / "ants" / "page.jpg")
    loaders = make_loaders(tiny_data, image_size=32, batch_size=32, verify_images=False)
    assert loaders.check.images_verified == 0
    with pytest.raises(ImageLoadError, match=r"page\.jpg: a text file"):
        next(iter(loaders.val))


def test_worker_message_is_reduced_to_the_original_line():
    """What torch's ExceptionWrapper passes when re-raising in the main process."""
    wrapped = ("Caught ImageLoadError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in <module>\n'
               "tlcourse.checks.ImageLoadError: /data/a.jpg: empty file (0 bytes); delete it\n")
    assert str(ImageLoadError(wrapped)) == "/data/a.jpg: empty file (0 bytes); delete it"
    assert str(ImageLoadError("plain message")) == "plain message"


# --------------------------------------------------------------------------- cache and real data

def test_cache_never_hides_a_changed_file(tiny_data):
    assert check_dataset(tiny_data).ok
    target = tiny_data / "train" / "bees" / "img_2.png"
    target.write_bytes(target.read_bytes()[:50])  # changed after a clean check
    check = check_dataset(tiny_data)
    assert check.bad_files == ["train/bees/img_2.png"]
    assert check_dataset(tiny_data, use_cache=False).bad_files == ["train/bees/img_2.png"]


@pytest.mark.slow
def test_course_dataset_passes_the_check(hymenoptera_dir):
    check = check_dataset(hymenoptera_dir, use_cache=False)
    assert check.ok and not check.warnings, str(check)
    assert {s: sum(c.values()) for s, c in check.counts.items()} == {"train": 245, "val": 153}
    assert check.images_verified == 398
    assert check.modes["P"] == 1  # train/ants/imageNotFound.gif, converted on load
