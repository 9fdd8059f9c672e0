"""`folio chat` end to end: the real bundled model, in a subprocess (pipes or a pseudo-terminal)
and in-process through `TerminalChat`, plus the argument handling that needs no model."""
from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.cli.chat import TerminalChat, format_stat_line, format_stats
from app.cli.main import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
STAT_RE = re.compile(r"\[(cancelled · )?TTFT (?:[\d.]+ s|-) · (?:[\d.]+|-) tok/s · (\d+) tokens? · "
                     r"cached (\d+)/(\d+) prompt tokens?[^\]]*\]")
LONG_ANSWER = "Count from 1 to 1000, separated by commas."
TIMEOUT = 300  # seconds for a load plus a short answer, on a slow shared CPU


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def _stats_lines(text: str) -> list[re.Match]:
    return list(STAT_RE.finditer(text))


class Chat:
    """`python -m app.cli chat ...` with piped stdin/stdout, read by a thread as bytes arrive."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "chat", *args], cwd=ROOT, env=_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._readers = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for t in self._readers:
            t.start()

    def _pump(self, stream, buffer: bytearray) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            with self._lock:
                buffer.extend(chunk)

    @property
    def out(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        with self._lock:
            return self._err.decode("utf-8", "replace")

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.out
            if predicate(out):
                return out
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers drain
                if predicate(self.out):
                    return self.out
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out or exited (rc={self.proc.poll()});\nstdout={self.out!r}\nstderr={self.err!r}")

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 60) -> int:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def chat_process():
    started: list[Chat] = []

    def start(*args: str) -> Chat:
        started.append(Chat(*args))
        return started[-1]

    yield start
    for chat in started:
        chat.kill()


# ---------------------------------------------------------------------------------- no model

def test_help_lists_every_command_and_the_app(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in SUBCOMMANDS) and "opens the desktop app" in out
    assert set(build_parser().parse_args(["serve"]).__dict__) >= {"host", "port", "api_key"}


def test_folio_without_a_command_opens_the_app_and_indexes_files_given(tmp_path):
    """What a double-click or "Open With" runs: the window opens, the file goes into the library,
    and a SIGTERM closes the window the normal way."""
    notes = tmp_path / "notes.txt"
    notes.write_text("The ferry leaves at noon.", encoding="utf-8")
    data = tmp_path / "data"
    env = _env(QT_QPA_PLATFORM="offscreen")
    app = subprocess.Popen([sys.executable, "-m", "app.cli", "--data-dir", str(data), str(notes)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    catalog, log = data / "library" / "catalog.sqlite3", data / "folio.log"
    deadline = time.monotonic() + 240
    sources: list = []

    def engine_settled() -> bool:
        return log.exists() and re.search(r"engine (ready|failed)", log.read_text()) is not None

    while time.monotonic() < deadline and app.poll() is None and not (sources and engine_settled()):
        time.sleep(0.5)
        if catalog.exists() and not sources:
            with sqlite3.connect(catalog) as db:
                try:
                    sources = db.execute("SELECT source FROM documents WHERE state='ready'").fetchall()
                except sqlite3.OperationalError:  # the schema is still being created
                    pass
    assert app.poll() is None, app.stdout.read()
    app.send_signal(signal.SIGTERM)
    assert app.wait(60) == 0
    assert sources == [(str(notes),)]
    text = log.read_text()
    assert "starting; data dir" in text and "engine ready" in text and "Traceback" not in text


def test_parser_has_room_for_more_subcommands():
    parser = build_parser()
    args = parser.parse_args(["chat", "--model", "m.gguf", "--system", "Be brief.", "--temperature", "0",
                              "--top-p", "0.5", "--max-tokens", "7", "--device", "cpu"])
    assert (args.command, args.model, args.system, args.temperature, args.top_p, args.max_tokens,
            args.device) == ("chat", "m.gguf", "Be brief.", 0.0, 0.5, 7, "cpu")
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["chat", "--device", "tpu"])
    assert e.value.code == 2


def test_bad_sampling_setting_is_one_clear_line(capsys):
    assert main(["chat", "--top-p", "0"]) == 2
    err = capsys.readouterr().err
    assert "top_p" in err and "Traceback" not in err and "Loading" not in err


def test_missing_model_exits_2_with_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--model", "/nonexistent"], cwd=ROOT,
                          env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Loading model" not in line]
    assert len(errors) == 1 and "/nonexistent" in errors[0] and "does not exist" in errors[0], proc.stderr
    assert proc.stdout == ""


def test_corrupt_gguf_exits_2_with_one_clear_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a GGUF file at all" * 100)
    proc = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--model", str(bad)], cwd=ROOT,
                          env=_env(FOLIO_CACHE_DIR=str(tmp_path / "cache")), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "Loading model" not in line]
    assert len(errors) == 1 and "broken.gguf" in errors[0] and "GGUF" in errors[0], proc.stderr


def test_stat_line_format():
    from engine.outputs import RequestMetrics

    m = RequestMetrics(num_prompt_tokens=49, num_cached_tokens=32, num_generated_tokens=11,
                       arrival_time=10.0, first_token_time=10.25, finish_time=11.25)
    line = format_stat_line(m, "stop")
    assert line == "[TTFT 0.25 s · 10.0 tok/s · 11 tokens · cached 32/49 prompt tokens]"
    assert STAT_RE.fullmatch(line)
    m = RequestMetrics(num_prompt_tokens=20, num_cached_tokens=0, num_generated_tokens=0,
                       arrival_time=10.0, first_token_time=None, finish_time=10.5)
    assert format_stat_line(m, "abort") == "[cancelled · TTFT - · - tok/s · 0 tokens · cached 0/20 prompt tokens]"
    assert "length limit" in format_stat_line(m, "length")
    assert "hit_rate  50.0%" in format_stats({"blocks_total": 10, "prefix_hit_rate": 0.5})


# ---------------------------------------------------------------------------------- subprocess, real model

@pytest.mark.slow
def test_one_turn_streams_an_answer_and_a_stat_line_then_eof_exits_0(chat_process):
    chat = chat_process("--temperature", "0", "--max-tokens", "8")
    chat.send("What is the capital of France?")
    out = chat.wait_for(lambda o: bool(_stats_lines(o)))
    assert chat.close() == 0
    answer = out[out.index("> ") + 2:_stats_lines(out)[0].start()]
    assert answer.strip(), out
    stat = _stats_lines(out)[0]
    assert int(stat.group(2)) >= 1 and not stat.group(1)
    assert "\x1b[" not in chat.out  # no colour codes into a pipe
    assert "Loading model…" in chat.err and "Traceback" not in chat.err


@pytest.mark.slow
def test_sigint_cancels_the_answer_and_the_chat_goes_on(chat_process):
    chat = chat_process("--temperature", "0", "--max-tokens", "4000")
    chat.send(LONG_ANSWER)
    chat.wait_for(lambda o: len(o) >= len("> ") + 12)  # the answer is streaming
    chat.proc.send_signal(signal.SIGINT)
    out = chat.wait_for(lambda o: bool(_stats_lines(o)) and o.endswith("> "))
    first = _stats_lines(out)[0]
    assert first.group(1), f"not cancelled: {out!r}"
    assert int(first.group(2)) < 4000
    assert chat.proc.poll() is None  # still running, at the prompt again

    # Another turn. /reset first: greedy on a fresh chat keeps this answer short and the same every
    # time (after a partial count of random length the model might well go on counting).
    chat.send("/reset")
    chat.send("Say hello.")
    out = chat.wait_for(lambda o: len(_stats_lines(o)) >= 2)
    assert chat.close() == 0
    assert "Traceback" not in chat.err and "KeyboardInterrupt" not in chat.err
    second = _stats_lines(out)[1]
    assert "Conversation cleared." in out[first.end():second.start()]
    assert not second.group(1) and out[first.end():second.start()].split("cleared.")[1].strip("> \n")


@pytest.mark.slow
def test_terminal_dim_stat_line_and_ctrl_c_at_the_prompt():
    """In a real (pseudo-)terminal: the stat line is dim; Ctrl+C on a half-typed line clears it;
    Ctrl+C at an empty prompt quits with code 0."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "app.cli", "chat", "--temperature", "0",
                                       "--max-tokens", "8"], _env(TERM="xterm"))
        finally:
            os._exit(127)
    buffer = bytearray()

    def read_until(predicate, timeout: float = TIMEOUT) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = buffer.decode("utf-8", "replace")
            if predicate(text):
                return text
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer.extend(chunk)
        raise AssertionError(f"timed out or exited: {bytes(buffer)!r}")

    try:
        read_until(lambda t: t.rstrip(" ").endswith(">") and "Loading" in t)
        os.write(fd, b"Hi!\r")
        text = read_until(lambda t: re.search(r"\x1b\[2m\[TTFT [^\]]*prompt tokens[^\]]*\]\x1b\[0m", t)
                          and t.rstrip(" ").endswith(">"))
        mark = len(text)
        os.write(fd, b"half a line")
        read_until(lambda t: "half a line" in t[mark:])
        # CPython's readline loop checks for signals only when select() is interrupted: a Ctrl+C
        # that lands while it is still handling the typed keys waits for the next key. Let it
        # settle first, as a person's pause between typing and Ctrl+C does.
        time.sleep(0.5)
        os.write(fd, b"\x03")  # Ctrl+C: clears the line, keeps running
        read_until(lambda t: t[mark:].rstrip(" ").endswith(">") and "\n" in t[mark:])
        time.sleep(0.5)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "Ctrl+C on a typed line quit"
        os.write(fd, b"\x03")  # Ctrl+C at an empty prompt: quit
        end = time.monotonic() + 60
        while (status := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < end:
            if select.select([fd], [], [], 0.1)[0]:
                _drain(fd, buffer)
        assert status[0] == pid, "still running after Ctrl+C at an empty prompt"
        assert os.waitstatus_to_exitcode(status[1]) == 0
        _drain(fd, buffer)
        assert b"Traceback" not in buffer
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def _drain(fd: int, buffer: bytearray) -> None:
    try:
        buffer.extend(os.read(fd, 65536))
    except OSError:
        pass


# ---------------------------------------------------------------------------------- in-process, real model

@pytest.fixture(scope="module")
def backend():
    from app.backends import LocalSpec, open_backend

    local = open_backend(LocalSpec())
    yield local
    local.shutdown()


class _Interrupting(io.StringIO):
    """A stdout that sends this process SIGINT once `after` characters of answer have arrived,
    as a person pressing Ctrl+C mid-answer would."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.fired = False

    def write(self, s: str) -> int:
        n = super().write(s)
        answer = self.getvalue().split("> ", 1)[-1]
        if not self.fired and len(answer) >= self.after:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return n


@pytest.mark.slow
def test_cancelled_answer_stays_in_the_history(backend):
    from engine import SamplingParams

    stdout = _Interrupting(after=10)
    stdin = io.StringIO(f"{LONG_ANSWER}\n/exit\nnever read\n")
    session = TerminalChat(backend, SamplingParams(max_tokens=4000, temperature=0), "Be helpful.",
                          stdin=stdin, stdout=stdout, stderr=io.StringIO())
    previous = signal.getsignal(signal.SIGINT)
    session.run()
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is only set while streaming
    out = stdout.getvalue()
    stat = _stats_lines(out)
    assert len(stat) == 1 and stat[0].group(1), out
    assert stdin.readline() == "never read\n"  # /exit quit
    shown = out[out.index("> ") + 2:stat[0].start()]
    assert len(shown) >= 10
    assert session.messages[:2] == [{"role": "system", "content": "Be helpful."},
                                    {"role": "user", "content": LONG_ANSWER}]
    assert len(session.messages) == 3 and session.messages[2]["role"] == "assistant"
    assert session.messages[2]["content"].rstrip("\n") == shown.rstrip("\n")  # what was shown is kept


@pytest.mark.slow
def test_turns_reuse_the_cache_and_commands_work(backend):
    from engine import SamplingParams

    stdin = io.StringIO("What is the capital of France?\nAnd of Germany?\n/stats\n/nope\n/reset\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    session = TerminalChat(backend, SamplingParams(max_tokens=8, temperature=0),
                          "You are a concise geography assistant.", stdin=stdin, stdout=stdout, stderr=stderr)
    session.run()  # ends at EOF
    out = stdout.getvalue()
    stats = _stats_lines(out)
    assert len(stats) == 2, out
    assert int(stats[0].group(4)) < int(stats[1].group(4))  # the second prompt holds the first turn
    assert int(stats[1].group(3)) >= 16  # ...and starts from the first turn's cached blocks
    after_stats = out[stats[1].end():]
    assert re.search(r"^\s+\w+\s+\d", after_stats, re.M), after_stats  # /stats: a table of numbers
    assert "unknown command /nope" in stderr.getvalue()
    assert "Conversation cleared." in out
    assert session.messages == [{"role": "system", "content": "You are a concise geography assistant."}]


def test_a_mistyped_command_is_a_usage_error_not_the_app(capsys):
    with pytest.raises(SystemExit) as e:
        main(["chta"])
    assert e.value.code == 2 and "invalid choice: 'chta'" in capsys.readouterr().err


def test_a_bad_remote_url_is_one_clear_line(capsys):
    assert main(["chat", "--remote", "ftp://example.com"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("folio chat: ") and "Traceback" not in err


def test_index_into_a_library_in_use_says_so(tmp_path, capsys, embedder):
    from rag import Library
    doc = tmp_path / "a.txt"
    doc.write_text("text", encoding="utf-8")
    with Library(tmp_path / "lib", embedder=embedder):
        assert main(["index", str(doc), "--library", str(tmp_path / "lib")]) == 2
    assert "is open in another Folio" in capsys.readouterr().err
