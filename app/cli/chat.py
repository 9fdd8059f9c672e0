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

from app.backends.choice import BackendError, add_backend_arguments, start_backend, user_errors

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments (argparse's code) and a model that cannot be loaded
EXIT_INTERRUPTED = 130  # Ctrl+C while the model was still loading

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
    p.add_argument("--temperature", type=float, default=0.7, metavar="F",
                   help="sampling temperature, 0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.9, metavar="F",
                   help="nucleus sampling threshold in (0, 1] (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=512, metavar="N",
                   help="longest answer in tokens (default: %(default)s)")
    add_backend_arguments(p)
    p.set_defaults(func=cmd_chat)



# ---------------------------------------------------------------------------------- folio chat

def cmd_chat(args: argparse.Namespace) -> int:
    from engine import SamplingParams

    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    except ValueError as e:
        return _error(f"folio chat: {e}")
    print("Connecting…" if args.remote else "Loading model…", file=sys.stderr, flush=True)
    try:
        backend = start_backend(args)
    except BackendError as e:
        return _error(f"folio chat: {e}")
    except KeyboardInterrupt:  # loading cannot be stopped; the engine thread is a daemon
        print(file=sys.stderr)
        return EXIT_INTERRUPTED

    print(f"{backend.description}. /help lists commands; Ctrl+C stops an answer, Ctrl+D quits.",
          file=sys.stderr, flush=True)
    try:
        ChatSession(backend.engine, params, args.system).run()
    finally:
        backend.engine.shutdown()
    return EXIT_OK


class ChatSession:
    """The conversation and the prompt loop. The whole history is submitted each turn; the
    engine's prefix cache finds the previous turn's KV blocks, so only the new text is computed."""

    def __init__(self, engine_thread, params, system: str | None = None,
                 stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.engine_thread = engine_thread
        self.params = params
        self.system = system
        self.stdin = stdin if stdin is not None else sys.stdin
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        _replace_unencodable(self.stdout)
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
            self._write(format_stats(self.engine_thread.stats()) + "\n")
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
        handle = self.engine_thread.submit([dict(m) for m in self.messages], self.params)

        def on_sigint(signum, frame) -> None:  # runs in the main thread, between bytecodes
            handle.cancel()  # the stream then ends, with the text so far

        printed: list[str] = []
        try:
            with _sigint_handler(on_sigint):
                for delta in handle:
                    self._write(delta)
                    printed.append(delta)
            output = handle.result()
        except KeyboardInterrupt:  # a Ctrl+C just before the handler was set
            handle.cancel()
            output = handle.result()
        except user_errors() as e:  # e.g. the conversation no longer fits the context
            self.messages.pop()
            if printed:
                self._write("\n")
            hint = " (/reset starts a new conversation)" if len(self.messages) > 1 else ""
            print(f"error: {e}{hint}", file=self.stderr, flush=True)
            return

        shown = "".join(printed)
        if output.text.startswith(shown) and len(output.text) > len(shown):
            self._write(output.text[len(shown):])  # text the stream held back, if any
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


# ---------------------------------------------------------------------------------- formatting

def format_stat_line(metrics, finish_reason: str | None = None) -> str:
    """One line after each answer: time to first token, decode speed, prompt-cache reuse."""
    parts = []
    if finish_reason == "abort":
        parts.append("cancelled")
    ttft = metrics.ttft_s
    parts.append(f"TTFT {ttft:.2f} s" if ttft is not None else "TTFT -")
    rate = metrics.decode_tokens_per_s
    parts.append(f"{rate:.1f} tok/s" if rate is not None else "- tok/s")
    parts.append(f"{metrics.num_generated_tokens} tokens")
    parts.append(f"cached {metrics.num_cached_tokens}/{metrics.num_prompt_tokens} prompt tokens")
    if finish_reason == "length":
        parts.append("cut at the length limit")
    if metrics.num_preemptions:
        parts.append(f"{metrics.num_preemptions} preemptions")
    return "[" + " · ".join(parts) + "]"


def format_stats(stats: dict[str, float]) -> str:
    if not stats:
        return "no engine stats yet"
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

def _error(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return EXIT_USAGE


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


def _replace_unencodable(stream: TextIO) -> None:
    """Model text may hold characters the terminal's encoding lacks: show '?' rather than crash."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="replace")
        except (ValueError, OSError):
            pass

