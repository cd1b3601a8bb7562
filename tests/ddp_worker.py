"""A torchrun worker for tests: ``python -m tlcourse`` with the up-front image check switched off.

Without the check (which decodes every image before training) a bad image is first met while the
rank that owns it caches or trains, which is what ``tests/test_distributed.py`` needs to show: a
failure on one rank only.
"""

import functools
import sys

import tlcourse.engine
from tlcourse.cli import main

tlcourse.engine.make_loaders = functools.partial(tlcourse.engine.make_loaders, verify_images=False)
sys.exit(main(sys.argv[1:]))
