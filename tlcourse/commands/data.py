"""``python -m tlcourse data``: fetch the course dataset and count it, or check any dataset folder."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("data", help="download the ants/bees dataset and count its images, or check a dataset folder")
    p.add_argument("--root", default=None, help="folder to put the dataset in (default: data/)")
    p.add_argument("--mirror", default=None, help="local path or URL of hymenoptera_data.zip (or TLCOURSE_DATA_MIRROR)")
    p.add_argument("--force", action="store_true", help="download and extract again")
    p.add_argument("--check", metavar="DIR", default=None,
                   help="list every problem of DIR/{train,val}/<class>/* instead (exit status 1 on errors)")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="with --check: check the folder structure only, do not open the images")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.check is not None:
        from ..checks import check_dataset  # PIL only: no torch import, so the check starts at once

        check = check_dataset(args.check, verify_images=args.verify_images)
        print(check)
        return 0 if check.ok else 1

    from ..data_summary import summarize  # neither imports torch
    from ..download import fetch

    path = fetch(args.root, args.mirror, force=args.force)
    print(f"dataset: {path}")
    print(summarize(path))
    return 0
