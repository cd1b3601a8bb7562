"""``python -m tlcourse site``: build the executed course as a static, searchable website."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("site", help="build the executed course as a static, searchable website (Sphinx + MyST-NB)",
                       description="Build build/site/ from notebooks/executed/ and the course summary. Notebooks "
                                   "whose executed copy is missing or older than the source are run first. Open it "
                                   "with: python -m http.server -d build/site --bind 127.0.0.1 8000")
    p.add_argument("--executed", default=None, help="folder of the executed notebooks (default: notebooks/executed/)")
    p.add_argument("--output", default=None, help="folder for the HTML site (default: build/site/)")
    p.add_argument("--no-run", action="store_true",
                   help="never run notebooks: stop with an error when an executed copy is missing or stale")
    p.add_argument("--smoke", action="store_true", help="when notebooks must run first, run them in smoke mode")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..site import build_site

    report = build_site(executed=Path(args.executed) if args.executed else None,
                        output=Path(args.output) if args.output else None,
                        run_missing=not args.no_run, smoke=args.smoke)
    for line in report.warnings[:10]:  # Sphinx's own words: a broken reference, an unknown output type
        print(f"warning: {line}")
    print(report.summary())
    print(f"open it: python -m http.server -d {report.output} --bind 127.0.0.1 8000  (then http://127.0.0.1:8000)")
    return 0
