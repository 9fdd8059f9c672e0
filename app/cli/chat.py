"""`folio chat`: a conversation with a model in the terminal, streamed as it is generated.

Imports no engine at import time: the engine (torch) loads when the command runs.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from typing import TextIO

from app import sampling
from app.backends.kv import KvBlocks
from app.backends import Backend, is_user_error, user_message
from app.backends.choice import add_backend_arguments
from app.cli.common import (EXIT_OK, add_repetition_penalty_argument, error, printable_answer, replace_unencodable,
                            start_backend)
from app.printable import printable
from app.wording import answer_summary, memory_summary, plural

PROMPT = "> "
CHAT_COMMANDS = {
    "/reset": "forget the conversation (the system prompt stays)",
    "/stats": "show the engine's KV-cache and scheduler numbers",
    "/help": "show these commands",
    "/exit": "quit (Ctrl+D at the prompt does too)",
}
_COMMAND_RE = re.compile(r"/[A-Za-z]+")


def add_chat_parser(sub) -> None:
    p = sub.add_parser(
        "chat", help="chat with a model in the terminal",
        description="Chat with a local model in the terminal. The answer streams as it is generated.",
        epilog="at the prompt:\n"
               + "".join(f"  {name:<8}{what}\n" for name, what in CHAT_COMMANDS.items())
               + "  Ctrl+C  stop the answer being written (at an empty prompt: quit)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--system", metavar="TEXT", help="system prompt, sent first in every turn")
    p.add_argument("--temperature", type=float, default=sampling.TEMPERATURE, metavar="F",
                   help="sampling temperature, 0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=sampling.TOP_P, metavar="F",
                   help="nucleus sampling threshold in (0, 1] (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=sampling.MAX_TOKENS, metavar="N",
                   help="longest answer in tokens (default: %(default)s)")
    add_repetition_penalty_argument(p)
    add_backend_arguments(p)
    p.set_defaults(func=cmd_chat)


# ---------------------------------------------------------------------------------- folio chat

def cmd_chat(args: argparse.Namespace) -> int:
    from engine import RequestError, SamplingParams

    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                repetition_penalty=args.repetition_penalty)
    except RequestError as e:
        return error(f"folio chat: {e}")
    backend = start_backend(args, "folio chat")
    if isinstance(backend, int):
        return backend
    print(f"{backend.describe()}. /help lists commands; Ctrl+C stops an answer, Ctrl+D quits.",
          file=sys.stderr, flush=True)
    memory = memory_summary(backend.model_info())
    if memory:  # the local model's weights and context; a remote one's are the server's
        print(f"Memory: {memory}", file=sys.stderr, flush=True)
    try:
        TerminalChat(backend, params, args.system).run()
    finally:
        backend.shutdown()
    return EXIT_OK


class TerminalChat:
    """The conversation and the prompt loop. The whole history is submitted each turn; the
    engine's prefix cache finds the previous turn's KV blocks, so only the new text is computed."""

    def __init__(self, backend: Backend, params, system: str | None = None,
                 stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.backend = backend
        self.params = params
        self.system = system
        self.stdin = stdin if stdin is not None else sys.stdin
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        replace_unencodable(self.stdout)
        self.color = _wants_color(self.stdout)
        self.messages: list[dict[str, str]] = []
        self.reset()
        # Line editing and in-memory history, only for a person at a terminal (readline writes
        # escape codes to stdout on import on some systems).
        self.readline = None
        if self.stdin is sys.stdin and self.stdin.isatty() and self.stdout is sys.stdout:
            try:
                import readline
                self.readline = readline
            except ImportError:
                pass

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    # ------------------------------------------------------------------ the prompt

    def run(self) -> None:
        while True:
            line = self._read_line()
            if line is None:
                return
            text = line.strip()
            if not text:
                continue
            first = text.split(maxsplit=1)[0]
            if _COMMAND_RE.fullmatch(first):
                if not self.command(first.lower()):
                    return
                continue
            self.turn(text)

    def _read_line(self) -> str | None:
        """The next line, or None to quit (Ctrl+D, or Ctrl+C at an empty prompt). Ctrl+C on a
        line being typed only clears the line."""
        while True:
            try:
                if self.stdin is sys.stdin and self.stdout is sys.stdout:
                    return input(PROMPT)
                self._write(PROMPT)
                line = self.stdin.readline()
                if not line:
                    raise EOFError
                return line.rstrip("\n")
            except EOFError:
                self._write("\n")
                return None
            except KeyboardInterrupt:
                self._write("\n")
                if self.readline is not None and self.readline.get_line_buffer():
                    continue
                return None

    def command(self, name: str) -> bool:
        """Run a /command; False means quit."""
        if name == "/exit":
            return False
        if name == "/reset":
            self.reset()
            self._write("Conversation cleared.\n")
        elif name == "/stats":
            self._write(format_stats(self.backend.stats()) + "\n")
        elif name == "/help":
            width = max(map(len, CHAT_COMMANDS))
            self._write("".join(f"  {n:<{width}}  {what}\n" for n, what in CHAT_COMMANDS.items())
                        + "  Ctrl+C stops an answer; Ctrl+D or Ctrl+C at an empty prompt quits.\n")
        else:
            print(f"unknown command {name}; /help lists them", file=self.stderr, flush=True)
        return True

    # ------------------------------------------------------------------ one answer

    def turn(self, text: str) -> None:
        """Send the conversation plus `text`, stream the answer, keep it (or what came of it
        before Ctrl+C) in the history, and print the stat line."""
        self.messages.append({"role": "user", "content": text})
        handle = self.backend.submit([dict(m) for m in self.messages], self.params)

        def on_sigint(signum, frame) -> None:  # runs in the main thread, between bytecodes
            handle.cancel()  # the stream then ends, with the text so far

        printed: list[str] = []
        try:
            with _sigint_handler(on_sigint):
                for delta in handle:
                    self._write_answer(delta)
                    printed.append(delta)
            output = handle.result()
        except KeyboardInterrupt:  # a Ctrl+C just before the handler was set
            handle.cancel()
            output = handle.result()
        except Exception as e:  # e.g. the conversation no longer fits the context
            if not is_user_error(e):
                raise
            self.messages.pop()
            if printed:
                self._write("\n")
            hint = " (/reset starts a new conversation)" if len(self.messages) > 1 else ""
            print(f"error: {printable(user_message(e))}{hint}", file=self.stderr, flush=True)
            return

        shown = "".join(printed)
        if output.text.startswith(shown) and len(output.text) > len(shown):
            self._write_answer(output.text[len(shown):])  # text the stream held back, if any
        if output.text:
            self.messages.append({"role": "assistant", "content": output.text})
        else:
            self.messages.pop()  # nothing came: forget the question too, to keep turns paired
        if output.text and not output.text.endswith("\n"):
            self._write("\n")
        stat = format_stat_line(output.metrics, output.finish_reason)
        self._write((f"\x1b[2m{stat}\x1b[0m" if self.color else stat) + "\n")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _write_answer(self, text: str) -> None:
        """Model text, its lines kept and any escape sequence in it spelled out, not obeyed."""
        self._write(printable_answer(text))


# ---------------------------------------------------------------------------------- formatting

def format_stat_line(metrics, finish_reason: str | None = None) -> str:
    """One line after each answer: time to first token, decode speed, prompt-cache reuse."""
    parts = ["cancelled"] if finish_reason == "abort" else []
    parts.append(answer_summary(metrics.ttft_s, metrics.decode_tokens_per_s, metrics.num_generated_tokens,
                                metrics.num_cached_tokens, metrics.num_prompt_tokens, finish_reason,
                                metrics.num_ram_cached_tokens, metrics.num_disk_cached_tokens))
    if metrics.num_preemptions:
        parts.append(plural(metrics.num_preemptions, "preemption"))
    return "[" + " · ".join(parts) + "]"


def format_stats(stats: dict[str, float]) -> str:
    """`/stats`: the backend's numbers, one a line; free KV blocks are those holding nothing (the
    cached ones, reusable for a prefix hit, are counted apart)."""
    if not stats:
        return "no engine stats yet"
    if "blocks_total" in stats and "blocks_free" in stats:
        stats = {**stats, "blocks_free": KvBlocks.from_stats(stats).free}
    width = max(map(len, stats))
    lines = []
    for key, value in stats.items():
        if isinstance(value, float) and key.endswith("rate"):
            shown = f"{value:.1%}"
        elif isinstance(value, float) and not value.is_integer():
            shown = f"{value:.3g}"
        else:
            shown = f"{int(value)}" if isinstance(value, float) else f"{value}"
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- helpers

class _sigint_handler:
    """Route Ctrl+C to `handler` for the duration of a `with` block (main thread only; elsewhere
    Python delivers signals to the main thread anyway, and this does nothing)."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.previous = None
        self.installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handler)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)


def _wants_color(stream: TextIO) -> bool:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

