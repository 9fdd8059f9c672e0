"""What the `folio` subcommands share: exit codes, the one-line error, output that cannot crash
on what it prints, and starting a backend."""
from __future__ import annotations

import argparse
import sys
from typing import TextIO

from app import sampling
from app.backends import Backend, BackendError, open_backend, user_message
from app.backends.choice import spec_from_args
from app.printable import printable

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but not all of it worked (files that could not be indexed)
EXIT_USAGE = 2   # bad arguments, a model that cannot be loaded, a server that cannot be reached
EXIT_INTERRUPTED = 130


def error(message: str) -> int:
    """Print `message` (escaped: it may quote a file name or a server's words) and say usage."""
    print(printable(message, keep="\n"), file=sys.stderr, flush=True)
    return EXIT_USAGE


def printable_answer(text: str) -> str:
    """Model text as the terminal should show it: its lines and tabs kept, any other control
    (an escape sequence a document taught it) spelled out rather than obeyed."""
    return printable(text, keep="\n\t")


def replace_unencodable(stream: TextIO) -> None:
    """Text may hold characters the terminal's encoding lacks: show '?' rather than crash."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="replace")
        except (ValueError, OSError):
            pass


def start_backend(args: argparse.Namespace, command: str) -> Backend | int:
    """The backend the arguments ask for, ready; or, when it cannot start, the exit code after
    saying why on stderr."""
    print("Connecting…" if getattr(args, "remote", None) else "Loading model…", file=sys.stderr, flush=True)
    try:
        return open_backend(spec_from_args(args))
    except BackendError as e:
        return error(f"{command}: {e}")
    except KeyboardInterrupt:  # loading cannot be stopped; the engine thread is a daemon
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # e.g. out of memory while loading
        return error(f"{command}: {user_message(e)}")


def add_repetition_penalty_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repetition-penalty", type=float, default=sampling.REPETITION_PENALTY, metavar="F",
                   help="above 1 keeps small models from repeating themselves; 1 is off (default: %(default)s)")
