"""``python -m tlcourse grade``: nbgrader autograde of the submissions, one score table."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("grade", help="autograde submitted notebooks with nbgrader and print the scores")
    p.add_argument("--course", default="release", help="the folder `release` wrote (default: release/)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..exercises.release import autograde, score_table

    print(score_table(autograde(args.course)))
    return 0
