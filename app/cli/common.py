"""What the `folio` subcommands share: exit codes, the one-line error, and starting a backend."""
from __future__ import annotations

import argparse
import sys

from app import sampling
from app.backends import Backend, BackendError, open_backend, user_message
from app.backends.choice import spec_from_args

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but not all of it worked (files that could not be indexed)
EXIT_USAGE = 2   # bad arguments, a model that cannot be loaded, a server that cannot be reached
EXIT_INTERRUPTED = 130


def error(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return EXIT_USAGE


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
