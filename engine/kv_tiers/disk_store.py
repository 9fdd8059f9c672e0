"""KV blocks on disk: one file per block, `<root>/<fingerprint hex>/<key hex>.kv`.

A file is a header (magic, version, fingerprint, key, parent key, prefix digest, block tokens,
payload dtype, shape, length and CRC32), the header's own CRC32, then the block's bytes. It is
written to a temporary file in the same folder, fsynced and renamed over the final name, so a
reader sees a whole file or none; a process killed mid-write leaves only a `.tmp-` file, which
no reader opens and a later start removes. Any file that fails a check (truncated, corrupt,
another model's) is skipped and deleted; the blocks are then computed again.

Several processes may share a folder (the app and `folio serve`): identical blocks written at
once are identical files renamed over each other; a file deleted by another process (its cap, or
`folio cache --clear`) is a miss. Each process keeps its own index of the keys it believes are
there, refreshed whenever the cap is enforced; the files are the truth. LRU is by mtime, which
a read touches.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"FOLIOKV\0"
VERSION = 1
HEADER = struct.Struct("<8sI16sQQ16sII16s6IQI")  # ... dtype, shape (6 dims, zero-padded), payload length, CRC
SUFFIX = ".kv"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600.0  # a write takes milliseconds; a temporary file this old was left by a killed process
LOW_WATER = 0.9  # enforcing the cap deletes down to this fraction, so it is not rescanned every write
INFO = "model.json"


@dataclass(frozen=True)
class BlockLayout:
    """What a block's payload is: the device cache's dtype and one block's shape."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class DiskKVStore:
    def __init__(self, folder: Path, fingerprint: bytes, layout: BlockLayout, block_size: int, cap_bytes: int,
                 description: str = "") -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.layout = layout
        self.block_size = block_size
        self.cap_bytes = cap_bytes
        self.head_size = HEADER.size + 8 * block_size + 4
        self.file_bytes = self.head_size + layout.nbytes
        self._lock = threading.Lock()
        self._names = itertools.count()
        self.known: set[int] = set()
        self.bytes_used = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._write_info(description)
        self.rescan(remove_stale=True)

    @property
    def num_blocks(self) -> int:
        return len(self.known)

    @property
    def capacity_blocks(self) -> int:
        return self.cap_bytes // self.file_bytes

    def path(self, key: int) -> Path:
        return self.folder / f"{key:016x}{SUFFIX}"

    def has(self, key: int) -> bool:
        return key in self.known or self.path(key).exists()

    # ------------------------------------------------------------------ reading

    def prefetch(self, keys: list[int]) -> None:
        """Start reading the files of these blocks (those that exist, up to the first missing
        one) in the background, so that reading them one by one goes at the disk's speed."""
        if not hasattr(os, "posix_fadvise"):
            return
        for key in keys:
            try:
                fd = os.open(self.path(key), os.O_RDONLY)
            except OSError:
                return
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def read_into(self, key: int, parent_key: int, digest: bytes, tokens: np.ndarray, out: np.ndarray) -> bool:
        """Read the block into `out` (uint8, the payload's size) if its file is there, whole and
        exactly this block; False otherwise (`out` then holds garbage)."""
        path = self.path(key)
        try:
            f = open(path, "rb", buffering=0)
        except OSError:
            self._forget(key)
            return False
        with f:
            try:
                verdict = self._read(f, key, parent_key, digest, tokens, out)
            except OSError:
                verdict = "corrupt"
            if verdict == "corrupt":
                log.warning("ignoring a damaged KV cache file %s", path)
                self._remove_if_same(path, os.fstat(f.fileno()))
                self._forget(key)
        if verdict == "ok":
            try:
                os.utime(path)  # most recently used
            except OSError:
                pass
        return verdict == "ok"

    def _read(self, f, key: int, parent_key: int, digest: bytes, tokens: np.ndarray, out: np.ndarray) -> str:
        """"ok", "other" (a valid file of another prefix under a colliding key: left alone) or "corrupt"."""
        head = f.read(self.head_size)
        if len(head) != self.head_size or zlib.crc32(head[:-4]) != int.from_bytes(head[-4:], "little"):
            return "corrupt"
        (magic, version, fingerprint, file_key, file_parent, file_digest, block_size, ndim, dtype, *rest) = \
            HEADER.unpack_from(head)
        shape, length, crc = tuple(rest[:6][:ndim]), rest[6], rest[7]
        if (magic != MAGIC or version != VERSION or fingerprint != self.fingerprint or file_key != key
                or block_size != self.block_size or dtype.rstrip(b"\0").decode() != self.layout.dtype
                or shape != self.layout.shape or length != self.layout.nbytes):
            return "corrupt"
        stored = np.frombuffer(head, dtype="<i8", count=self.block_size, offset=HEADER.size)
        if file_parent != parent_key or file_digest != digest or not np.array_equal(stored, tokens):
            return "other"
        view = memoryview(out).cast("B")
        if f.readinto(view) != length or f.read(1) or zlib.crc32(view) != crc:
            return "corrupt"
        return "ok"

    # ------------------------------------------------------------------ writing

    def write(self, key: int, parent_key: int, digest: bytes, tokens: np.ndarray, payload: np.ndarray) -> bool:
        """Write one block atomically (the caller's thread: the background writer). False if the
        disk refused (full, read-only); the block then simply stays off disk."""
        view = memoryview(np.ascontiguousarray(payload)).cast("B")
        shape = self.layout.shape + (0,) * (6 - len(self.layout.shape))
        head = HEADER.pack(MAGIC, VERSION, self.fingerprint, key, parent_key, digest, self.block_size,
                           len(self.layout.shape), self.layout.dtype.encode(), *shape, len(view), zlib.crc32(view))
        head += np.ascontiguousarray(tokens, dtype="<i8").tobytes()
        head += zlib.crc32(head).to_bytes(4, "little")
        tmp = self.folder / f"{TMP_PREFIX}{key:016x}-{os.getpid()}-{next(self._names)}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            except FileNotFoundError:  # the folder was cleared (`folio cache --clear`) under us
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            with open(fd, "wb", buffering=0) as f:
                f.write(head)
                f.write(view)
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except OSError as e:
            log.warning("cannot write the KV cache file for block %016x: %s", key, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        with self._lock:
            if key not in self.known:
                self.known.add(key)
                self.bytes_used += self.file_bytes
            over = self.bytes_used > self.cap_bytes
        if over:
            self.enforce_cap()
        return True

    # ------------------------------------------------------------------ the cap and the index

    def enforce_cap(self) -> None:
        """Delete the least recently used files until the folder is under LOW_WATER of the cap."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        if total > self.cap_bytes:
            for _, size, path in sorted(entries):
                if total <= self.cap_bytes * LOW_WATER:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:  # another process took it first
                    pass
                except OSError:
                    continue
                total -= size
        self.rescan()

    def rescan(self, remove_stale: bool = False) -> None:
        """Refresh the index from the folder (and drop temporary files a killed process left)."""
        if remove_stale:
            now = time.time()
            for entry in _scandir(self.folder):
                if entry.name.startswith(TMP_PREFIX):
                    try:
                        if now - entry.stat().st_mtime > STALE_TMP_S:
                            os.unlink(entry.path)
                    except OSError:
                        pass
        entries = self._entries()
        known = set()
        for _, _, path in entries:
            try:
                known.add(int(path.stem, 16))
            except ValueError:
                pass
        with self._lock:
            self.known = known
            self.bytes_used = sum(size for _, size, _ in entries)

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for entry in _scandir(self.folder):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _forget(self, key: int) -> None:
        with self._lock:
            if key in self.known:
                self.known.discard(key)
                self.bytes_used -= self.file_bytes

    @staticmethod
    def _remove_if_same(path: Path, st: os.stat_result) -> None:
        """Delete a bad file unless another process has renamed a new one over it meanwhile."""
        try:
            now = os.stat(path)
            if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(path)
        except OSError:
            pass

    def _write_info(self, description: str) -> None:
        """model.json: what the folder holds, for `folio cache --stats`."""
        info = self.folder / INFO
        if info.exists():
            return
        tmp = self.folder / f"{TMP_PREFIX}{INFO}-{os.getpid()}"
        try:
            tmp.write_text(json.dumps({"model": description, "dtype": self.layout.dtype,
                                       "block_size": self.block_size}) + "\n")
            os.replace(tmp, info)
        except OSError:
            pass

    def stats(self) -> dict[str, int]:
        return {"disk_blocks_cached": self.num_blocks, "disk_blocks_total": self.capacity_blocks,
                "disk_bytes": self.bytes_used, "disk_bytes_total": self.cap_bytes}


def _scandir(folder: Path):
    try:
        with os.scandir(folder) as it:
            yield from it
    except FileNotFoundError:
        return


# ---------------------------------------------------------------------- the whole cache, for the CLI

@dataclass
class FolderUsage:
    folder: Path
    model: str
    files: int
    bytes: int


def usage(root: Path) -> list[FolderUsage]:
    """Per model folder under `root`: what it holds."""
    out = []
    for entry in sorted(_scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        folder = Path(entry.path)
        files = total = 0
        for f in _scandir(folder):
            if f.name.endswith(SUFFIX) and not f.name.startswith("."):
                try:
                    total += f.stat().st_size
                    files += 1
                except OSError:
                    pass
        try:
            model = json.loads((folder / INFO).read_text()).get("model", "")
        except (OSError, ValueError, AttributeError):
            model = ""
        out.append(FolderUsage(folder, model, files, total))
    return out


def clear(root: Path) -> tuple[int, int]:
    """Delete every model folder under `root`; (files, bytes) removed. A process using the cache
    meanwhile sees misses and computes again."""
    found = usage(root)
    for u in found:
        shutil.rmtree(u.folder, ignore_errors=True)
    return sum(u.files for u in found), sum(u.bytes for u in found)
