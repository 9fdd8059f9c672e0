"""`folio`: one subcommand per job (chat, index, ask, serve, cache), or the desktop app without one.

`main(argv)` parses one subcommand and calls its `cmd_*` function, which returns the exit code.
This module imports neither Qt nor the engine at import time: `folio --help` stays instant, and
the engine (torch) is imported only by the subcommands that need it.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from app.cli.cache import add_cache_parser
from app.cli.chat import add_chat_parser
from app.cli.common import EXIT_INTERRUPTED, EXIT_USAGE
from app.cli.documents import add_ask_parser, add_index_parser
from app.server.command import add_serve_arguments, cmd_serve

SUBCOMMANDS = ("chat", "index", "ask", "serve", "cache")


# ---------------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="folio",
        description="Folio: offline chat with local language models and your documents.",
        epilog="Without a command, folio opens the desktop app: folio [--data-dir DIR] [--model PATH] "
               "[--theme light|dark] [FILE...] (the files are added to the library).",
    )
    parser.add_argument("--self-test", action="store_true",
                        help="check the installation headless (load the model, answer, index, search) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    add_chat_parser(sub)
    add_index_parser(sub)
    add_ask_parser(sub)
    _add_serve_parser(sub)
    add_cache_parser(sub)
    return parser



def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API",
                       description="An OpenAI-compatible server (/v1/models, /v1/chat/completions, "
                                   "/v1/completions, /v1/embeddings) on the local model. Listens on "
                                   "127.0.0.1 unless --host says otherwise.")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """`folio COMMAND ...` runs a command; `folio [--data-dir DIR] [FILE...]` (what a double-click
    or "Open With" runs) opens the desktop app, indexing the files given."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in {*SUBCOMMANDS, "-h", "--help", "--self-test"}
                    and (argv[0].startswith("-") or os.path.exists(argv[0]))):  # a typo'd command: usage
        from app.gui.launch import run_gui
        return run_gui(argv)
    args = parser.parse_args(argv)
    if args.self_test:
        from app.cli.self_test import run
        return run()
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except KeyboardInterrupt:  # a Ctrl+C nothing else expected: quit without a traceback
        print(file=sys.stderr)
        return EXIT_INTERRUPTED

