"""Open any image a learner's folder may hold as a plain 8-bit RGB picture.

torchvision's default loader only calls ``convert("RGB")``. That is wrong or noisy for several
real files: palette GIFs with transparency (the hymenoptera dataset ships one), 16-bit PNGs
(converted by clipping, so they come out white), CMYK JPEGs and phone photos whose EXIF
orientation says "rotate me". This module handles each case explicitly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: File suffixes treated as images. Unlike torchvision's list this includes ``.gif``: the
#: hymenoptera training set counts ``train/ants/imageNotFound.gif`` among its 245 images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened PIL image to RGB, respecting EXIF rotation, alpha and bit depth."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: rescale to 8 bits instead of clipping everything above 255.
        img = img.point(lambda v: v * (255.0 / 65535.0)).convert("L")
    if img.mode == "P":
        # Palette images may carry transparency as bytes; go through RGBA to honour it.
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def open_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """Load ``path`` fully into memory as RGB (the file is closed before returning).

    ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode, done inside
    libjpeg, several times faster for large photos) as long as both sides stay >= ``draft``
    pixels; other formats ignore it. Callers pass the size their transform resizes to.
    """
    with warnings.catch_warnings():
        # Handled above: "Palette images with Transparency expressed in bytes..."
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        with Image.open(path) as img:
            if draft:
                img.draft(None, (draft, draft))
            img.load()
            return to_rgb(img)
