"""`folio cache --stats | --clear`: the KV blocks Folio keeps on disk so that documents read once
are not read again, after a restart too (engine/kv_tiers). Imports neither torch nor the engine's
model code: it only looks at the folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from app.backends.choice import DISK_KV_CACHE
from app.cli.common import EXIT_OK
from app.printable import printable
from app.wording import plural


def add_cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the KV cache kept on disk",
                       description="Folio keeps the KV blocks of long prompts (documents, long chats) on "
                                   "disk, per model, so that a chat over a document read before starts at "
                                   "once, after a restart too. Blocks are recomputed whenever they are "
                                   "missing, so clearing loses nothing but time.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--stats", action="store_true", help="what is kept, per model (the default)")
    what.add_argument("--clear", action="store_true", help="delete every kept block")
    p.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="the KV cache folder (default: 'kv' in Folio's cache folder, or $FOLIO_CACHE_DIR/kv)")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    from engine.cache_dir import kv_cache_root
    from engine.kv_tiers.disk_store import clear, usage
    root = args.dir or kv_cache_root()
    if args.clear:
        files, nbytes = clear(root)
        print(f"Removed {plural(files, 'block')} ({_size(nbytes)}) from {printable(str(root))}.")
        return EXIT_OK
    found = usage(root)
    print(f"KV cache on disk: {printable(str(root))} (cap per model: {DISK_KV_CACHE})")
    if not found:
        print("  empty")
    for u in found:
        print(f"  {printable(u.model or u.folder.name)}: {plural(u.files, 'block')}, {_size(u.bytes)}")
    if len(found) > 1:
        print(f"  total: {plural(sum(u.files for u in found), 'block')}, {_size(sum(u.bytes for u in found))}")
    return EXIT_OK


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
