"""`folio serve`: an OpenAI-compatible server on the local engine, for other programs to use.

This module is the command-line side (arguments, binding, loading); the web app itself is
`app.server.api`. Like `app.cli`, it imports neither the engine nor the web framework at import
time, so `folio --help` stays instant. `python -m app.server ...` runs it without the `folio`
entry point.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from app.backends import BackendError, LocalSpec, open_backend, user_message
from app.backends.choice import add_local_model_arguments, check_device
from app.server.limits import ServerLimits

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, an address that cannot be bound, a model that cannot be loaded
EXIT_INTERRUPTED = 130
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "FOLIO_API_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_local_model_arguments(parser)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, this computer only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on, 0 for any free one (default: %(default)s)")
    parser.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV) or None,
                        help=f"require 'Authorization: Bearer KEY' on every request "
                             f"(default: ${API_KEY_ENV} if set, else no key)")
    parser.add_argument("--max-model-len", type=int, metavar="N",
                        help="longest prompt plus answer in tokens (default: the model's own limit)")
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="another model id clients may use (default: only the model's own name)")
    limits = ServerLimits()
    parser.add_argument("--max-request-bytes", type=int, metavar="N", default=limits.max_request_bytes,
                        help="refuse request bodies larger than this with a 413 (default: %(default)s)")
    parser.add_argument("--max-embedding-inputs", type=int, metavar="N", default=limits.max_embedding_inputs,
                        help="most texts in one embeddings request (default: %(default)s)")
    parser.add_argument("--header-timeout", type=float, metavar="SECONDS", default=limits.header_timeout,
                        help="close a connection whose request headers take longer (default: %(default)s)")
    parser.add_argument("--body-timeout", type=float, metavar="SECONDS", default=limits.body_timeout,
                        help="close a connection whose request body takes longer after its headers "
                             "(default: %(default)s)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Bind first (a busy port fails fast), then load the model, then serve until Ctrl+C."""
    if not 0 <= args.port <= 65535:
        return _error(f"folio serve: --port must be between 0 and 65535, got {args.port}")
    if args.max_model_len is not None and args.max_model_len < 2:
        return _error(f"folio serve: --max-model-len must be at least 2, got {args.max_model_len}")
    for option, value in (("--max-request-bytes", args.max_request_bytes),
                          ("--max-embedding-inputs", args.max_embedding_inputs),
                          ("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not value > 0 or value == float("inf"):
            return _error(f"folio serve: {option} must be a positive number, got {value}")
    try:
        check_device(args.device)
    except BackendError as e:
        return _error(f"folio serve: {e}")
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        return _error(f"folio serve: cannot listen on {args.host}:{args.port}: {e.strerror or e}")
    if warning := exposure_warning(args.host, args.api_key):
        print(warning, file=sys.stderr, flush=True)

    print("Loading model…", file=sys.stderr, flush=True)
    config = {} if args.max_model_len is None else {"max_model_len": args.max_model_len}
    try:
        backend = open_backend(LocalSpec.of(args.model, args.device, **config))
    except KeyboardInterrupt:
        sock.close()
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # BackendError, or e.g. out of memory while loading
        sock.close()
        return _error(f"folio serve: {user_message(e)}")
    try:
        return _serve(sock, backend, model_id(args.model, backend.model_path), args)
    finally:
        backend.shutdown()


def _serve(sock: socket.socket, backend, name: str, args: argparse.Namespace) -> int:
    import uvicorn

    from app.server.api import create_app
    from app.server.deadlines import DeadlineProtocol

    aliases = [args.served_model_name] if args.served_model_name else []
    limits = ServerLimits(max_request_bytes=args.max_request_bytes, max_embedding_inputs=args.max_embedding_inputs,
                          header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    app = create_app(backend, api_key=args.api_key, model_name=name, aliases=aliases,
                     loopback_only=is_loopback(args.host), limits=limits)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {name} at http://{shown}:{port}/v1 (Ctrl+C stops)", file=sys.stderr, flush=True)
    # A stream still open at Ctrl+C gets a few seconds, then is cut (its request is cancelled).
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=3, http=DeadlineProtocol.under(limits))
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def bind(host: str, port: int) -> socket.socket:
    """A listening socket: connections made from now on wait in the backlog until the server
    starts accepting, instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # on Windows it would let a second server share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog
    except OSError:
        sock.close()
        raise
    return sock


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when other machines could reach a server that has no key."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: listening on {host} without an API key: anyone who can reach this machine "
            f"can use the model. Pass --api-key KEY (or set ${API_KEY_ENV}) to require one.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def model_id(model_arg: str | None, folder: Path) -> str:
    """The name clients see: what the user pointed at (a GGUF file's stem, a folder's name),
    not the conversion cache folder the engine loads it from."""
    if model_arg is None:
        from engine.loader import bundled_model_path
        return bundled_model_path().stem
    path = Path(model_arg).expanduser()
    return path.stem if path.is_file() else path.resolve().name or folder.name


def _error(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="folio serve", description="An OpenAI-compatible server on the local model.")
    add_serve_arguments(parser)
    try:
        return cmd_serve(parser.parse_args(argv))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
