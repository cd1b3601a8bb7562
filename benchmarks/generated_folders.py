"""Generated "own data" for benchmarks (``tlcourse.bench_folders``), as a script:

    python benchmarks/generated_folders.py leaves data/own_leaves       # 1,200 images, 512x384
"""

import sys

from tlcourse.bench_folders import DATASETS, LEAVES, SHAPES, generate, main

__all__ = ["DATASETS", "LEAVES", "SHAPES", "generate", "main"]

if __name__ == "__main__":
    sys.exit(main())
