"""``python -m tlcourse cache``: what the persistent feature cache holds, and clearing it."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("cache", help="list the feature cache (size, entries) or clear it",
                       description="The feature cache keeps what frozen layers computed, so later runs skip "
                                   "the backbone pass. Location: --cache-dir, else $TLCOURSE_CACHE_DIR, "
                                   "else data/cache.")
    p.add_argument("action", nargs="?", choices=["list", "size", "clear"], default="list",
                   help="list (default): every entry; size: the total only; clear: delete every entry (only files "
                        "the cache wrote, in its tlcourse-features/ subfolder)")
    p.add_argument("--cache-dir", default=None, help="the cache folder (default: $TLCOURSE_CACHE_DIR, else data/cache)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..feature_cache import FeatureCache  # no torch: reading headers is plain file I/O
    from ..files import megabytes
    from ..text import printable

    cache = FeatureCache(args.cache_dir)
    entries = cache.entries()
    total = sum(e.bytes for e in entries)
    if args.action == "clear":
        print(cache.clear().line(cache.root))
        return 0
    usable = [e for e in entries if e.header is not None]
    other = [e for e in entries if e.header is None]
    note = f"; {len(other)} unusable or incomplete file(s)" if other else ""
    foreign, _ = cache.others()
    note += f"; {foreign} other item(s) in the folder, not the cache's (never listed or deleted)" if foreign else ""
    print(f"feature cache {cache.root}: {len(usable)} entries, {megabytes(total)}{note}")
    if args.action == "size" or not entries:
        return 0
    print(f"{'size':>10}  {'created':<19}  what")
    for e in entries:
        print(f"{megabytes(e.bytes):>10}  {printable(e.created):<19}  {printable(e.what)}")
    where = f" --cache-dir {args.cache_dir}" if args.cache_dir else ""
    print(f"clear it with: python -m tlcourse cache clear{where}")
    return 0
