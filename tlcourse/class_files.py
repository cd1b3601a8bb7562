"""Which files belong to a class folder: the one policy the checker and the training loader share.

``ImageFolderRGB`` lists its samples with :func:`list_class`, and ``check_dataset`` reports with
the same function what it left out, so the checker and training never disagree about a file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .images import is_image_file

#: Files operating systems drop into folders; ignored without a warning.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})


def _is_ignored_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the file name, kept as surrogates by Python
        return False
    return True


@dataclass
class ClassFiles:
    """What one class folder holds, by the one policy the checker and the training loader share."""

    images: list[Path] = field(default_factory=list)
    #: ``(severity, path, message)`` for everything left out or worth a look.
    notes: list[tuple[str, Path, str]] = field(default_factory=list)


def list_class(class_dir: Path, class_names=()) -> ClassFiles:
    """The image files of ``class_dir``, recursively and sorted as torchvision's ``ImageFolder`` walks.

    The policy (``ImageFolderRGB`` lists its samples with this same function):

    * images in sub-folders belong to the class (as in ``ImageFolder``); each sub-folder gets a
      warning, a louder one when it is named like another class;
    * hidden files and folders (``.ipynb_checkpoints/``, ``._x.jpg``) are skipped;
    * a link to a folder *inside* a class folder is not followed: a link back up (``loop -> ..``)
      would never end, and one to a sibling class would train its images under the wrong label.
      Links to files are followed, and a class folder may itself be a link (see ``check_split``).
    """
    found = ClassFiles()
    walked: list[tuple[str, list[str]]] = []
    for folder, dirs, files in os.walk(class_dir):  # followlinks=False: links to folders are listed, not entered
        kept = []
        for name in sorted(dirs):
            path = Path(folder) / name
            if name.startswith("."):
                found.notes.append(("info", path, "hidden folder, ignored"))
            elif path.is_symlink():
                found.notes.append(("warning", path, _folder_link_note(path, class_dir)))
            else:
                kept.append(name)
        dirs[:] = kept
        walked.append((folder, files))
    for folder, files in sorted(walked):
        for name in sorted(files):
            path = Path(folder) / name
            if is_image_file(path):
                found.images.append(path)
                if not _is_utf8(name):
                    found.notes.append(("warning", path, "file name is not valid UTF-8 (shown with \\x escapes); "
                                                         "it loads, but rename it: zip, Windows and notebooks may not"))
            elif _is_ignored_file(name):
                found.notes.append(("info", path, "hidden/system file, ignored"))
            else:
                found.notes.append(("warning", path, f"not an image file (suffix {path.suffix or 'none'!r}), "
                                                     "ignored; move it out of the dataset or convert it to JPEG/PNG"))
    found.notes += _subfolder_notes(class_dir, found.images, class_names)
    return found


def _folder_link_note(link: Path, class_dir: Path) -> str:
    target = os.readlink(link)
    real, class_real = link.resolve(), class_dir.resolve()
    loop = real == class_real or real in class_real.parents
    return (f"link to a folder (-> {target}) inside a class folder, not followed"
            + (": it points back up, a loop" if loop else "")
            + "; copy the images in, or make the class folder itself the link")


def _subfolder_notes(class_dir: Path, images: list[Path], class_names) -> list[tuple[str, Path, str]]:
    counts: Counter = Counter(p.relative_to(class_dir).parts[0] for p in images if p.parent != class_dir)
    notes = []
    for sub, n in sorted(counts.items()):
        message = (f"sub-folder of class '{class_dir.name}': its {n} image(s) are trained as '{class_dir.name}' "
                   "(sub-folders are merged into their class)")
        if sub in class_names and sub != class_dir.name:
            message += f", not as the class '{sub}' it is named like; move them to ../{sub}/ if they are {sub}"
        notes.append(("warning", class_dir / sub, message))
    return notes
