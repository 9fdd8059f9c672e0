"""`folio serve` in a subprocess for tests, and what they ask of it (shared by the server, remote
and app-remote tests)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-folio-test"
MODEL = "SmolLM2-135M-Instruct.Q4_1"  # the bundled GGUF's name
START_TIMEOUT = 300  # seconds to load the model on a slow shared CPU
HI = [{"role": "user", "content": "Hi!"}]
LONG_ANSWER = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]


class ServerProcess:
    """`python -m app.server --port 0 ...`; the port is read from the line it prints once ready.
    Output is drained by a thread so that the access log never fills the pipe."""

    URL_RE = re.compile(r"Serving .+ at (http://\S+/v1)")

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env.pop("FOLIO_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "app.server", "--port", "0", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.base_url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        self._ready.wait(START_TIMEOUT)
        if self.base_url is None:
            self.stop()
            raise RuntimeError("folio serve did not start:\n" + "".join(self.lines))
        self.root_url = self.base_url.removesuffix("/v1")
        self.port = int(self.root_url.rsplit(":", 1)[1])

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.base_url is None and (m := self.URL_RE.search(line)):
                self.base_url = m.group(1)
                self._ready.set()
        self._ready.set()  # the process ended

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stats(server: ServerProcess) -> dict:
    response = httpx.get(f"{server.root_url}/folio/stats", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    return response.json()


def wait_until(server: ServerProcess, condition, timeout: float = 60.0) -> dict:
    """The engine's stats once `condition(stats)` holds (or the last seen, after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not condition(s := stats(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return s


def wait_until_idle(server: ServerProcess) -> dict:
    """The stats once nothing runs and no block is held."""
    return wait_until(server, lambda s: s["num_running"] == s["num_waiting"] == s["blocks_used"] == 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
