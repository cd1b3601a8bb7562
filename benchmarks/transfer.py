"""``python benchmarks/transfer.py [options]``: the same as ``python -m tlcourse bench`` (``tlcourse.bench``)."""

import sys

from tlcourse.bench import main

if __name__ == "__main__":
    sys.exit(main())
