"""How Folio answers unless told otherwise: one set of defaults for the desktop app, `folio chat`
and `folio ask`.

A small model left to itself loops ("The sea is a siren to thee" forty times, until the length
limit): a mild repetition penalty stops that without bending ordinary answers.
"""
from __future__ import annotations

TEMPERATURE = 0.7
TOP_P = 0.9
MAX_TOKENS = 512
REPETITION_PENALTY = 1.1
REPETITION_PENALTY_RANGE = (1.0, 2.0)  # what the settings offer: 1 is off, above 1.5 garbles text
