"""`folio index` and `folio ask`: the document library from the terminal.

`index` shows one progress line per file (redrawn in place on a terminal), reports every file
that could not be indexed and carries on past it. `ask` answers from the library (or from the
documents given with `--doc`, pinned whole when they fit), streams the answer, then lists the
sources with the ones the answer cites marked. File names, document text and answers are printed
through `printable`: a name may hold a newline, an escape sequence or bytes that are not UTF-8.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TextIO

from app.backends import is_user_error, user_message
from app.backends.choice import add_backend_arguments
from app.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, add_repetition_penalty_argument, error,
                            printable_answer, replace_unencodable, start_backend)
from app.paths import library_dir
from app.printable import printable
from app.wording import plural

BAR_WIDTH = 24
STATUS_WORDS = {"added": "added", "updated": "updated", "unchanged": "unchanged", "duplicate": "duplicate",
                "failed": "FAILED", "cancelled": "cancelled"}


def add_library_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", metavar="DIR", type=Path,
                   help="the library folder (default: the 'library' folder in Folio's data folder, "
                        "or $FOLIO_DATA_DIR/library)")


def add_index_parser(sub) -> None:
    p = sub.add_parser("index", help="add documents to the library",
                       description="Index files and folders (PDF, DOCX, EPUB, HTML, Markdown, text, code) "
                                   "for search. Unchanged files are skipped; changed files are re-indexed.")
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="files or folders")
    add_library_argument(p)
    p.set_defaults(func=cmd_index)


def add_ask_parser(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from your documents",
                       description="Answer a question from the library, streaming the answer, then list "
                                   "the sources.")
    p.add_argument("question")
    p.add_argument("--doc", action="append", default=[], metavar="PATH", type=Path,
                   help="answer from this document (indexed first if needed; repeatable)")
    p.add_argument("--top-k", type=int, default=5, metavar="N",
                   help="how many passages to retrieve (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, metavar="F",
                   help="0 = greedy, the same answer every time (default: %(default)s)")
    add_repetition_penalty_argument(p)
    add_library_argument(p)
    add_backend_arguments(p)
    p.set_defaults(func=cmd_ask)


# ---------------------------------------------------------------------------------- folio index

def cmd_index(args: argparse.Namespace) -> int:
    from rag import Library, LibraryError

    replace_unencodable(sys.stdout)
    cancel = threading.Event()
    bar = ProgressLine(sys.stderr)
    try:
        lib = Library(args.library or library_dir())
    except LibraryError as e:
        return error(f"folio index: {e}")
    with lib:
        try:
            report = _interruptible(lambda: lib.add(args.paths, progress=bar.update, cancel=cancel), cancel)
        finally:
            bar.clear()
        for r in report.results:
            print(format_result(r), flush=True)
        counts = {status: sum(r.status == status for r in report.results) for status in STATUS_WORDS}
        summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no files"
        print(f"{summary}. The library holds {plural(len(lib.documents()), 'document')}.", file=sys.stderr, flush=True)
    if cancel.is_set():
        return EXIT_INTERRUPTED
    return EXIT_FAILED if report.failed else EXIT_OK


def format_result(r) -> str:
    """`added      notes.md  (3 chunks)`; a failure's reason on the line below it."""
    detail = plural(r.num_chunks, "chunk") if r.status in ("added", "updated", "unchanged") else (r.error or "")
    line = f"{STATUS_WORDS[r.status]:<10} {printable(str(r.path))}"
    if r.status == "failed":
        return line + f"\n           {printable(r.error or '')}"
    return line + (f"  ({printable(detail)})" if detail else "")


class ProgressLine:
    """`[ 3/10] name.pdf  ######------  45% embedding`, redrawn in place on a terminal; on a pipe
    only each file's end is worth a line, and the per-file results say that already."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = _isatty(stream)
        self.width = 0

    def update(self, p) -> None:
        if not self.live:
            return
        filled = round(p.fraction * BAR_WIDTH)
        name = printable(p.path.name)
        name = name if len(name) <= 40 else name[:39] + "…"
        line = (f"[{p.file_index + 1:>{len(str(p.file_count))}}/{p.file_count}] {name}  "
                f"{'#' * filled}{'-' * (BAR_WIDTH - filled)} {p.fraction:4.0%} {p.stage}")
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


# ---------------------------------------------------------------------------------- folio ask

def cmd_ask(args: argparse.Namespace) -> int:
    from engine import RequestError, SamplingParams
    from rag import Library, LibraryError

    replace_unencodable(sys.stdout)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                repetition_penalty=args.repetition_penalty)
    except RequestError as e:
        return error(f"folio ask: {e}")
    if args.top_k < 1:
        return error("folio ask: --top-k must be at least 1")
    try:
        lib = Library(args.library or library_dir())
    except LibraryError as e:
        return error(f"folio ask: {e}")
    with lib:
        pinned = []
        if args.doc:
            report = lib.add(args.doc)
            for r in report.failed:
                print(f"folio ask: {printable(r.error or str(r.path))}", file=sys.stderr)
            pinned = [r.doc_id for r in report.results if r.doc_id is not None]
            if not pinned:
                return error("folio ask: none of the --doc files could be read")
        elif not lib.documents():
            return error("folio ask: the library is empty; add documents with `folio index PATH...`")
        backend = start_backend(args, "folio ask")
        if isinstance(backend, int):
            return backend
        try:
            return _answer(args, lib, pinned, backend, params)
        finally:
            backend.shutdown()


def _answer(args: argparse.Namespace, lib, pinned: list[str], backend, params) -> int:
    from rag import build_prompt, cited_sources

    prompt = build_prompt(args.question, library=lib, pinned_doc_ids=pinned, search=not pinned, k=args.top_k,
                          count_tokens=backend.count_tokens,
                          max_context_tokens=backend.max_model_len - args.max_tokens)
    handle = backend.submit(prompt.messages, params)
    shown = []
    try:
        try:
            for delta in handle:
                sys.stdout.write(printable_answer(delta))
                sys.stdout.flush()
                shown.append(delta)
        except KeyboardInterrupt:
            handle.cancel()
        output = handle.result()
    except Exception as e:  # e.g. the question and documents do not fit the context
        if not is_user_error(e):
            raise
        return error(f"\nfolio ask: {user_message(e)}")
    shown_text = "".join(shown)
    if output.text.startswith(shown_text):
        sys.stdout.write(printable_answer(output.text[len(shown_text):]))  # text the stream held back, if any
    print()
    cited = {s.number for s in cited_sources(output.text, prompt.sources)}
    if prompt.sources:
        print("\nSources:")
        for s in prompt.sources:
            mark = "*" if s.number in cited else " "
            print(f"{mark}[{s.number}] {printable(s.label)}: {printable(s.snippet)}")
        if cited:
            print("(* cited in the answer)")
    return EXIT_OK


# ---------------------------------------------------------------------------------- helpers

def _interruptible(work, cancel: threading.Event):
    """Run `work` in a thread so Ctrl+C can set `cancel` and still get its (partial) report."""
    result: list = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name="folio-index")
    worker.start()
    while worker.is_alive():
        try:
            worker.join(0.1)
        except KeyboardInterrupt:
            cancel.set()
            print("\nstopping after the current batch…", file=sys.stderr, flush=True)
    if failure:
        raise failure[0]
    return result[0]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
