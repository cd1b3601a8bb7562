"""Open any image a learner's folder may hold as a plain 8-bit RGB picture.

torchvision's default loader only calls ``convert("RGB")``. That is wrong or noisy for several
real files: palette GIFs with transparency (the hymenoptera dataset ships one), 16-bit PNGs
(converted by clipping, so they come out white), float TIFFs (clipped to black), CMYK JPEGs and
phone photos whose EXIF orientation says "rotate me". This module handles each case explicitly.

It also refuses, from the header alone and before decoding, images whose processing would need
absurd memory: over PIL's hard pixel limit (``2 × Image.MAX_IMAGE_PIXELS``, a decompression
bomb) or so elongated that resizing the short side to 256 px (what evaluation does) would make
a gigantic picture, e.g. a 2 KB PNG of 1 × 2,000,000 px. The check, the training loader and
``predict`` all open images here, so they agree on what is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: File suffixes treated as images. Unlike torchvision's list this includes ``.gif``: the
#: hymenoptera training set counts ``train/ants/imageNotFound.gif`` among its 245 images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


#: Longest side over shortest side that is still a picture (phone panoramas reach ~10).
MAX_ASPECT_RATIO = 50
#: The short side evaluation resizes to (``data.resize_size(224)``), used to state the memory cost.
EVAL_SHORT_SIDE = 256


class ImageTooLargeError(ValueError):
    """An image refused from its header: decoding or resizing it would need too much memory."""


def check_header(width: int, height: int) -> None:
    """Refuse sizes no training image has, before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageTooLargeError(f"image header declares {width}x{height} px; the file is damaged")
    short, long = sorted((width, height))
    if long > MAX_ASPECT_RATIO * short:
        scaled = EVAL_SHORT_SIDE * long // short
        gigabytes = 3 * EVAL_SHORT_SIDE * scaled / 1e9
        raise ImageTooLargeError(
            f"image is {width}x{height} px, more than {MAX_ASPECT_RATIO} times longer than wide: resizing its "
            f"short side to {EVAL_SHORT_SIDE} px would make a {EVAL_SHORT_SIDE}x{scaled:,} px picture "
            f"(~{gigabytes:,.1f} GB); crop it or delete it")


def is_image_file(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened PIL image to RGB, respecting EXIF rotation, alpha and bit depth."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: rescale to 8 bits instead of clipping everything above 255.
        img = img.point(lambda v: v * (255.0 / 65535.0)).convert("L")
    if img.mode == "F":
        img = _float_to_l(img)
    if img.mode == "P":
        # Palette images may carry transparency as bytes; go through RGBA to honour it.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def _float_to_l(img: Image.Image) -> Image.Image:
    """32-bit float greyscale to 8 bits: 0..1 (the usual float image) or 0..255 as is, else min-max."""
    low, high = img.getextrema()
    if 0 <= low and high <= 1:
        img = img.point(lambda v: v * 255.0)
    elif not (0 <= low and high <= 255) and high > low:
        img = img.point(lambda v: (v - low) * (255.0 / (high - low)))
    return img.convert("L")


def open_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """Load ``path`` fully into memory as RGB (the file is closed before returning).

    Raises PIL's ``DecompressionBombError`` or :class:`ImageTooLargeError` from the header,
    before decoding, for images that would exhaust memory.

    ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode, done inside
    libjpeg, several times faster for large photos) as long as both sides stay >= ``draft``
    pixels; other formats ignore it. Callers pass the size their transform resizes to.
    """
    with warnings.catch_warnings():
        # Handled above: "Palette images with Transparency expressed in bytes..."
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        with Image.open(path) as img:  # reads the header only; PIL refuses bombs here
            check_header(*img.size)
            if draft:
                img.draft(None, (draft, draft))
            img.load()
            return to_rgb(img)
