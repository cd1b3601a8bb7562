"""``python -m tlcourse release``: the learner's notebooks and the instructor's autograder (nbgrader)."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("release", help="write the learner's notebooks (no solutions) and nbgrader's grading files")
    p.add_argument("--output", default="release", help="nbgrader course folder to write (default: release/)")
    p.add_argument("--only", action="append", default=[], metavar="NN", help="only notebook NN (repeatable)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..exercises.release import release

    learner = release(args.output, args.only)
    root = learner.parent.parent
    print(f"learner's notebooks (hand these out): {learner}")
    print(f"instructor's files: {root / 'source' / learner.name} (solutions, answers), {root / 'gradebook.db'}, "
          f"{root / 'nbgrader_config.py'}")
    print(f"grade: put submissions in {root / 'submitted'}/<student>/tlcourse/, then "
          f"python -m tlcourse grade --course {args.output}")
    return 0
