"""A torchrun worker for tests: ``python -m tlcourse`` with the up-front image check switched off.

Without the check (which decodes every image before training) a bad image is first met while a
rank caches or trains, which is what ``tests/test_distributed.py`` needs to show: a failure met
inside the run stops every rank with one line.
"""

import functools
import sys

import tlcourse.data
from tlcourse.cli import main

tlcourse.data.make_loaders = functools.partial(tlcourse.data.make_loaders, verify_images=False)
sys.exit(main(sys.argv[1:]))
