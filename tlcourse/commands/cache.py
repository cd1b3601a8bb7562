"""``python -m tlcourse cache``: what the persistent feature cache holds, and clearing it."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("cache", help="list the feature cache (size, entries) or clear it",
                       description="The feature cache keeps what frozen layers computed, so later runs skip "
                                   "the backbone pass. Location: --cache-dir, else $TLCOURSE_CACHE_DIR, "
                                   "else data/cache.")
    p.add_argument("action", nargs="?", choices=["list", "size", "clear"], default="list",
                   help="list (default): every entry; size: the total only; clear: delete every entry")
    p.add_argument("--cache-dir", default=None, help="the cache folder (default: $TLCOURSE_CACHE_DIR, else data/cache)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..feature_cache import FeatureCache  # no torch: reading headers is plain file I/O
    from ..files import megabytes

    cache = FeatureCache(args.cache_dir)
    entries = cache.entries()
    total = sum(e.bytes for e in entries)
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"feature cache {cache.root}: removed {removed} file(s), {megabytes(freed)}")
        return 0
    usable = [e for e in entries if e.header is not None]
    other = [e for e in entries if e.header is None]
    note = f"; {len(other)} unusable or incomplete file(s)" if other else ""
    print(f"feature cache {cache.root}: {len(usable)} entries, {megabytes(total)}{note}")
    if args.action == "size" or not entries:
        return 0
    print(f"{'size':>10}  {'created':<19}  what")
    for e in entries:
        print(f"{megabytes(e.bytes):>10}  {e.created:<19}  {e.what}")
    where = f" --cache-dir {args.cache_dir}" if args.cache_dir else ""
    print(f"clear it with: python -m tlcourse cache clear{where}")
    return 0
