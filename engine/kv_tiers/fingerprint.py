"""What KV blocks in the RAM and disk tiers are keyed by, so that only the same computation reads them.

The model fingerprint hashes everything the KV of a token prefix depends on: the weights (sampled,
not read whole: the size and a few MiB at fixed offsets of each file), the model config, the
tokenizer's files, quantization, compute and KV dtypes, whether packed weights were expanded, the
device type (kernels round differently) and the block size. It names the disk folder and is the
root of the digest chain.

A block in a tier is identified by a BLAKE2b chain over its whole prefix,
`D_j = H(D_{j-1} || tokens_j)` with `D_{-1}` the fingerprint: unlike the 64-bit device keys
(which find candidates fast and can be made to collide), a digest match means the same prefix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

KV_FORMAT = 1  # bump when the engine computes KV differently: old files then stop matching
SAMPLE_BYTES = 1 << 20
SAMPLES = 4  # plus the last MiB
DIGEST_SIZE = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")


def file_sample_hash(path: Path) -> bytes:
    """Size plus a MiB at 0, 1/4, 1/2, 3/4 and the end: weights that differ anywhere that matters
    differ there, and a 15 GB file costs 5 MiB of reading, not the whole file."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        for offset in sorted({min(size * i // SAMPLES, max(0, size - SAMPLE_BYTES)) for i in range(SAMPLES)}
                             | {max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return h.digest()


def model_fingerprint(weight_files: list[Path], model_config, tokenizer_folder: Path | None, *,
                      quantization: str | None, dtype: str, kv_dtype: str, dense: bool, device_type: str,
                      block_size: int) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"folio-kv")
    h.update(KV_FORMAT.to_bytes(4, "little"))
    for path in weight_files:
        h.update(file_sample_hash(path))
    h.update(json.dumps(dataclasses.asdict(model_config), sort_keys=True, default=str).encode())
    if tokenizer_folder is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                h.update(name.encode() + hashlib.blake2b((tokenizer_folder / name).read_bytes()).digest())
    h.update(json.dumps([quantization, dtype, kv_dtype, dense, device_type, block_size]).encode())
    return h.digest()


def chain_digest(parent: bytes, tokens: np.ndarray) -> bytes:
    """The digest of a block whose prefix before it has digest `parent`."""
    return hashlib.blake2b(parent + np.ascontiguousarray(tokens, dtype="<i8").tobytes(),
                           digest_size=DIGEST_SIZE).digest()


def model_key(fingerprint: bytes) -> int:
    """The 64-bit root of the device prefix keys: another model's keys differ from the start."""
    return int.from_bytes(fingerprint[:8], "little")
