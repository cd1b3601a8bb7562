"""The course dataset: download, verify and extract it, and where it lives.

``fetch`` never leaves a half dataset behind: it downloads to a temporary file, checks the
archive (checksum, zip integrity, expected folders), extracts into a temporary folder and only
then moves the result into place and writes a completion marker. No torch import: ``python -m
tlcourse data`` and ``doctor`` use it before torch is needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

from . import TLCourseError
from .checks import SPLITS
from .files import remove_stale_temp
from .settings import HYMENOPTERA_SHA256, HYMENOPTERA_URL, data_mirror, data_root

MARKER = ".tlcourse-complete"
DATASET_NAME = "hymenoptera_data"


def _is_url(source: str) -> bool:
    return source.split(":", 1)[0].lower() in ("http", "https", "ftp", "file")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:  # URLError, timeouts and HTTP errors are all OSErrors
        raise TLCourseError(
            f"could not download {url} ({exc}); offline? set TLCOURSE_DATA_MIRROR to a local "
            f"copy of {Path(url).name} and run again"
        ) from exc


def _check_archive(archive: Path, source: str, sha256: str | None, name: str) -> None:
    if sha256 is not None:
        actual = _sha256(archive)
        if actual != sha256:
            raise TLCourseError(
                f"{source}: checksum mismatch (sha256 {actual[:12]}…, expected {sha256[:12]}…); "
                "the archive is corrupt or not the expected dataset, delete it and fetch again"
            )
    if not zipfile.is_zipfile(archive):
        raise TLCourseError(f"{source}: not a zip archive; point the mirror at {name}.zip")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        # testzip() only reports CRC errors; damaged deflate data or headers raise instead.
        raise TLCourseError(f"{source}: the archive is corrupt ({exc}); fetch it again") from None
    if bad is not None:
        raise TLCourseError(f"{source}: member {bad} is corrupt; fetch the archive again")
    for split in SPLITS:
        if not any(n.startswith(f"{name}/{split}/") for n in names):
            raise TLCourseError(f"{source}: archive has no {name}/{split}/ folder; is it the right dataset?")


def fetch(
    root: str | Path | None = None,
    mirror: str | None = None,
    *,
    url: str = HYMENOPTERA_URL,
    sha256: str | None = HYMENOPTERA_SHA256,
    name: str = DATASET_NAME,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make ``<root>/<name>`` hold the complete dataset and return that path.

    ``mirror`` (or ``TLCOURSE_DATA_MIRROR``) is a local path or URL used instead of ``url``.
    A second call returns at once. Any failure leaves ``root`` as it was: ``force=True`` builds the
    new copy aside and replaces the old one only once the new one is complete.
    """
    root = Path(root) if root is not None else data_root()
    target = root / name
    remove_stale_temp(root)  # ".fetch-<pid>-..." of a fetch that was killed
    if (target / MARKER).exists() and not force:
        return target
    if target.exists() and not (target / MARKER).exists() and not force and any(target.iterdir()):
        # A folder without the marker is an earlier interrupted or hand-made copy: never trust it.
        raise TLCourseError(
            f"{target} exists but was not completed by tlcourse (interrupted extract?); "
            "delete it or call fetch(force=True)"
        )

    source = mirror or data_mirror() or url
    root.mkdir(parents=True, exist_ok=True)
    # The new copy is built aside; whatever is at ``target`` is replaced only once it is complete.
    workdir = Path(tempfile.mkdtemp(prefix=f".fetch-{os.getpid()}-", dir=root))
    try:
        if _is_url(source):
            archive = workdir / f"{name}.zip.part"
            _download(source, archive, progress)
        else:
            archive = Path(source).expanduser()
            if not archive.is_file():
                raise TLCourseError(f"dataset mirror {archive} does not exist; fix TLCOURSE_DATA_MIRROR")
        _check_archive(archive, source, sha256, name)
        extracted = workdir / "extract"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)
        staged = extracted / name
        (staged / MARKER).write_text(f"source={source}\nsha256={_sha256(archive)}\n")
        if target.exists():  # force=True, or an empty leftover: swap, and put it back if the swap fails
            os.replace(target, workdir / "previous")
            try:
                os.replace(staged, target)
            except BaseException:
                os.replace(workdir / "previous", target)
                raise
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``None`` means the course dataset under ``data/``; a path must hold ``train/`` and ``val/``."""
    if data_dir is None:
        return data_root() / DATASET_NAME
    return Path(data_dir).expanduser()
