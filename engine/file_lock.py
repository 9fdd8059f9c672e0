"""An exclusive advisory lock on a file that goes away with the process holding it.

A crash or SIGKILL releases it, so "its lock is free" means "nobody is working on this".
fcntl.flock on POSIX, msvcrt.locking on Windows.
"""
from __future__ import annotations

import os
from pathlib import Path


class ExclusiveLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False if another process holds it."""
        try:
            handle = open(self.path, "a+b")
        except OSError:
            return False
        try:
            if os.name == "nt":
                import msvcrt
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None

    def __enter__(self) -> ExclusiveLock:
        if not self.try_acquire():
            raise RuntimeError(f"{self.path} is locked by another process")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
