"""Content-addressed artifact cache: ``ROOT/<sha256>.so`` (``<sha256>.zip`` for a vulkan WGSL plan).

A download goes to ``<sha256>.part`` and becomes visible (an atomic rename) only
after its size and sha256 match what the manifest says: a half-written or
tampered artifact is never loadable. A broken stream is resumed from the bytes
already on disk; a download whose digest does not match is deleted and fetched
again from the start, a bounded number of times.

The transport is injected: ``fetch(offset)`` yields ``Chunk`` s starting at
``offset``. The pool client wraps ``Pool.FetchArtifact``; tests pass a function.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from hyperinfer.errors import Code, DataLoss, HyperinferError, InvalidArgument
from hyperinfer.package import sha256_file

log = logging.getLogger("hyperinfer.node.cache")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SUFFIXES = (".so", ".zip")  # TVM shared library; WGSL kernels + plan (vulkan)

# transient: worth another attempt (the stream broke, the bytes were bad, the gateway restarted)
RETRYABLE = {Code.DATA_LOSS, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.RESOURCE_EXHAUSTED}


@dataclass(frozen=True)
class Chunk:
    offset: int
    data: bytes
    total_size: int


ChunkSource = Callable[[int], Iterable[Chunk]]


def default_cache_dir(node_id: str) -> Path:
    return Path.home() / ".cache" / "hyperinfer" / "node" / node_id / "artifacts"


class _Progress:
    """A rich bar on an interactive stderr, else one log line with the rate at the end."""

    def __init__(self, label: str, total: int, interactive: bool | None):
        self.label, self.total = label, total
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.start = time.monotonic()
        self.bar = None
        if self.interactive:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            from hyperinfer.console import err

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def close(self, done: int, ok: bool) -> None:
        if self.bar is not None:
            self.bar.stop()
        secs = max(time.monotonic() - self.start, 1e-6)
        if ok:
            log.info("downloaded %s: %.1f MB in %.1fs (%.1f MB/s)", self.label, done / 1e6, secs, done / 1e6 / secs)


class ArtifactCache:
    def __init__(self, root: str | os.PathLike, retries: int = 3, backoff_s: float = 0.5,
                 progress: bool | None = None, sleep: Callable[[float], None] = time.sleep):
        """``retries``: further attempts after the first; ``progress``: None = bar only on a TTY."""
        self.root = Path(root)
        self.retries = retries
        self.backoff_s = backoff_s
        self.progress = progress
        self._sleep = sleep

    def path_for(self, sha256: str, suffix: str = ".so") -> Path:
        if not _SHA_RE.match(sha256 or ""):
            raise InvalidArgument(f"artifact sha256 {sha256!r} is not 64 lowercase hex characters")
        if suffix not in _SUFFIXES:
            raise InvalidArgument(f"artifact file type {suffix!r} is not one of {', '.join(_SUFFIXES)}")
        return self.root / f"{sha256}{suffix}"

    def _part_path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.part"

    def lookup(self, sha256: str, size: int, suffix: str = ".so") -> Path | None:
        """The cached file if present and intact; a damaged one is deleted."""
        path = self.path_for(sha256, suffix)
        if not path.is_file():
            return None
        if path.stat().st_size == size and sha256_file(path) == sha256:
            return path
        log.warning("cached artifact %s is damaged; deleting it", path)
        path.unlink(missing_ok=True)
        return None

    def get(self, sha256: str, size: int, fetch: ChunkSource, label: str = "", suffix: str = ".so") -> Path:
        """Path of the verified artifact, downloading it first if needed."""
        if size < 0:
            raise InvalidArgument(f"artifact size {size} is negative")
        cached = self.lookup(sha256, size, suffix)
        if cached is not None:
            return cached
        # private: whoever can write here can swap a verified artifact before it is loaded
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        label = label or sha256[:12]
        last: HyperinferError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * (2 ** (attempt - 1))
                log.warning("download of %s failed (%s); retry %d/%d in %.1fs",
                            label, last, attempt, self.retries, delay)
                self._sleep(delay)
            try:
                return self._download(sha256, size, fetch, label, suffix)
            except HyperinferError as e:
                if e.code not in RETRYABLE:
                    raise
                last = e
        raise DataLoss(f"could not download artifact {label} after {self.retries + 1} attempts: {last}")

    def _download(self, sha256: str, size: int, fetch: ChunkSource, label: str, suffix: str = ".so") -> Path:
        part = self._part_path(sha256)
        have = part.stat().st_size if part.is_file() else 0
        if have > size:  # a leftover longer than the artifact can only be garbage
            part.unlink()
            have = 0
        progress = _Progress(label, size, self.progress)
        done = have
        ok = False
        try:
            # resume: hash what is already on disk, then append
            h = hashlib.sha256()
            if have:
                log.info("resuming download of %s at %d of %d bytes", label, have, size)
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
            with open(part, "ab") as f:
                if done < size:
                    for chunk in fetch(done):
                        if chunk.total_size != size:
                            self._discard(part)
                            raise DataLoss(f"artifact {label}: gateway says {chunk.total_size} bytes, "
                                           f"the manifest says {size}")
                        if chunk.offset != done:
                            raise DataLoss(f"artifact {label}: chunk at offset {chunk.offset}, expected {done}")
                        if done + len(chunk.data) > size:
                            self._discard(part)
                            raise DataLoss(f"artifact {label}: more data than the manifest's {size} bytes")
                        f.write(chunk.data)
                        h.update(chunk.data)
                        done += len(chunk.data)
                        progress.update(done)
                        if done == size:
                            break
                f.flush()
                os.fsync(f.fileno())
            if done != size:
                # stream ended early: keep the part file so the next attempt resumes
                raise DataLoss(f"artifact {label}: stream ended at {done} of {size} bytes")
            if h.hexdigest() != sha256:
                self._discard(part)
                raise DataLoss(f"artifact {label}: sha256 {h.hexdigest()[:16]}… does not match "
                               f"the manifest's {sha256[:16]}…; download discarded")
            final = self.path_for(sha256, suffix)
            os.replace(part, final)
            ok = True
            return final
        finally:
            progress.close(done - have, ok)

    @staticmethod
    def _discard(part: Path) -> None:
        part.unlink(missing_ok=True)
