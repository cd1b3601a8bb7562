"""One image, opened exactly as training will open it: what is wrong with it, and what to do.

``check_dataset`` runs :func:`inspect_image` on every file before training; ``predict`` and the
ONNX classifier name a file they cannot load with :func:`describe_load_error`. PIL only, no torch:
``onnx_predict`` imports this module and must stay torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .images import ImageTooLargeError, open_rgb

#: ``EXIF`` tag 0x0112: values other than 1 mean "display this rotated or mirrored".
_ORIENTATION = 0x0112


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def describe_load_error(path: str | Path, exc: BaseException) -> str:
    """What is wrong with an image that ``open_rgb`` could not load, and what to do, in one line."""
    path = Path(path)
    detail = " ".join(str(exc).split())
    try:
        size = path.stat().st_size
    except OSError:
        return f"file disappeared or cannot be read ({detail}); check the folder hasn't changed"
    if size == 0:
        return "empty file (0 bytes); delete it or copy the image again"
    if isinstance(exc, ImageTooLargeError):
        return detail
    if isinstance(exc, Image.DecompressionBombError):
        return (f"image too large to open ({detail}); downscale it, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")
    if isinstance(exc, UnidentifiedImageError):
        if _looks_like_text(path):
            return "a text file (HTML page? error message?) with an image name, not an image; delete it"
        return f"not an image PIL can read ({size} bytes, unknown format); delete it or convert it to JPEG/PNG"
    if "truncated" in detail.lower() or isinstance(exc, (SyntaxError, EOFError)):
        return f"truncated or corrupt image ({detail}); the copy or download was cut short, copy it again or delete it"
    return f"cannot be loaded as an image ({type(exc).__name__}: {detail}); delete or replace it"


@dataclass
class _ImageReport:
    mode: str | None = None
    rotated: bool = False
    severity: str | None = None
    message: str | None = None


#: Reports of files already opened in this process, keyed by what would change if the file (or
#: PIL's pixel limit) changed: a notebook that builds its loaders several times pays once.
_VERIFIED: dict[tuple, _ImageReport] = {}
_VERIFIED_MAX = 200_000


def forget_verified() -> None:
    """Forget which files were already opened, so the next check decodes every image again (benchmarks)."""
    _VERIFIED.clear()


def inspect_image(path: str | Path, *, use_cache: bool = True) -> _ImageReport:
    """Open ``path`` as training will; report its source mode and any problem."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, Image.MAX_IMAGE_PIXELS)
    except OSError:
        key = None
    if use_cache and key in _VERIFIED:
        return _VERIFIED[key]
    report = _inspect_image(path)
    if key is not None and len(_VERIFIED) < _VERIFIED_MAX:
        _VERIFIED[key] = report
    return report


def _inspect_image(path: Path) -> _ImageReport:
    report = _ImageReport()
    try:
        if path.stat().st_size == 0:
            raise UnidentifiedImageError("empty file")
        with Image.open(path) as img:  # header only: mode, size, EXIF
            report.mode = img.mode
            report.rotated = img.getexif().get(_ORIENTATION, 1) not in (1, None)
            width, height = img.size
        open_rgb(path)  # full decode and conversion, exactly as the DataLoader will do
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        report.severity, report.message = "error", describe_load_error(path, exc)
        return report
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        report.severity = "warning"
        report.message = (f"very large image ({width}x{height} = {width * height:,} px, over PIL's "
                          f"decompression-bomb warning limit of {limit:,} px); it loads, but slowly and with "
                          "much memory on every epoch; downscale it")
    return report
