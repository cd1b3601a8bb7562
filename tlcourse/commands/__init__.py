"""One module per ``python -m tlcourse`` command, each with ``add(sub)`` and ``run(args)``.

``tlcourse.cli`` builds the parser from ``COMMANDS`` in this order. A command module imports
nothing heavy at module level (no torch, no torchvision): building the parser for ``--help`` or
``data --check`` must start at once. Heavy imports go inside ``run``.
"""

#: Command names; ``lr-find`` lives in ``lr_find.py`` (a hyphen cannot be in a module name).
COMMANDS = ("data", "report", "train", "lr-find", "predict", "interpret", "evaluate", "export", "serve",
            "cache", "course", "site", "bench", "doctor", "release", "grade")
