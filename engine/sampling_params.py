"""Per-request sampling settings, checked when the request is made.

Every field is checked for type and range here, once, so that nothing a client sends can fail
later inside a step, where it would take other requests down with it. A bad value raises
`RequestError` (a `ValueError`) naming the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.errors import RequestError

INT64_MAX = (1 << 63) - 1
SEED_LIMIT = 1 << 63  # seeds are folded into 64-bit generator state with the sample index added
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows: ask for 0 (greedy) instead
MAX_TEMPERATURE = 100.0
PENALTY_RANGE = (0.01, 100.0)
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000


@dataclass
class SamplingParams:
    """What to generate and how. `temperature=0` means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        _int("max_tokens", self.max_tokens, 1, INT64_MAX)
        _int("top_k", self.top_k, 0, INT64_MAX, "(0 = off)")
        _int("n", self.n, 1, INT64_MAX)
        if self.seed is not None:
            _int("seed", self.seed, 0, SEED_LIMIT - self.n)
        _float("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise RequestError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, "
                               f"got {self.temperature!r}", "temperature")
        _float("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0.0:
            raise RequestError("top_p must be in (0, 1], got 0", "top_p")
        _float("min_p", self.min_p, 0.0, 1.0)
        _float("repetition_penalty", self.repetition_penalty, *PENALTY_RANGE)
        if not isinstance(self.ignore_eos, bool):
            raise RequestError(f"ignore_eos must be true or false, got {self.ignore_eos!r}", "ignore_eos")
        self._check_stop()
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)
        self.min_p, self.repetition_penalty = float(self.min_p), float(self.repetition_penalty)

    def _check_stop(self) -> None:
        stop = self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(f"stop must be a non-empty string or a list of them, got {stop!r:.200}", "stop")
        if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings of at most "
                               f"{MAX_STOP_CHARS} characters", "stop")
        self.stop = list(stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _int(name: str, value: object, lo: int, hi: int, note: str = "") -> None:
    """An int (never a bool, never a float) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer {note}, got {value!r:.100}".replace("  ", " "), name)
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi} {note}, got {value}".replace("  ", " "), name)


def _float(name: str, value: object, lo: float, hi: float) -> None:
    """A finite number (int or float, never a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r:.100}", name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}", name)
