"""The models the gateway offers, and their artifacts in chunks (design §7, "Artifacts").

:class:`Catalog` reads a model repository (``REPO/NAME/VERSION/manifest.json``,
see :mod:`hyperinfer.package`). It re-scans the folder at most once a second,
so a package copied in while the gateway runs is offered at the next
heartbeat; a package whose manifest does not parse is skipped with one
warning, never fatal. A model folder with an ``UNLOADED`` file in it is not
offered (model control, :mod:`hyperinfer.gateway.model_control`).

The gateway never loads artifacts; it only hands out bytes. Still, before it
serves a file it checks the file's sha256 against the manifest, once per
(path, inode, mtime, size): a corrupt file on the gateway's disk is a
DATA_LOSS error and a log line, not a silent bad download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from hyperinfer.errors import DataLoss, InvalidArgument, NotFound
from hyperinfer.package import MANIFEST, SIGNATURE, ArtifactInfo, Manifest, ModelRepository

log = logging.getLogger("hyperinfer.gateway")

CHUNK_BYTES = 1 << 20
RESCAN_SECONDS = 1.0
# a model folder holding this file is not offered (RepositoryModelUnload writes it, Load removes it)
UNLOADED_MARKER = "UNLOADED"


@dataclass(frozen=True)
class Offer:
    """A model package as offered to nodes: the exact manifest bytes and publisher signature."""

    name: str
    version: int
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes  # manifest.sig bytes, b"" if unsigned
    path: Path

    @property
    def targets(self) -> list[str]:
        return sorted(self.manifest.artifacts)


@dataclass(frozen=True)
class Chunk:
    offset: int
    data: bytes
    total_size: int


class Catalog:
    """Models offered by this gateway, read from a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository | str | os.PathLike,
                 clock: Callable[[], float] = time.monotonic):
        self.repository = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
        self._clock = clock
        self._lock = threading.Lock()
        self._offers: dict[tuple[str, int], Offer] = {}
        self._stamps: dict[Path, tuple[int, int, int]] = {}  # manifest path -> (mtime_ns, size, sig mtime)
        self._scanned_at: float | None = None
        self._verified: dict[Path, tuple[int, int, int]] = {}  # artifact path -> (ino, mtime_ns, size)
        self._warned: set[tuple[Path, tuple[int, int, int]]] = set()

    @property
    def root(self) -> Path:
        return self.repository.root

    # ---------------------------------------------------------------- offers

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if not force and self._scanned_at is not None and now - self._scanned_at < RESCAN_SECONDS:
                return
            self._scanned_at = now
            self._rescan()

    def _rescan(self) -> None:
        found: dict[tuple[str, int], Offer] = {}
        stamps: dict[Path, tuple[int, int, int]] = {}
        previous = {o.path / MANIFEST: o for o in self._offers.values()}
        root = self.root
        try:
            model_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError as e:
            log.warning("cannot read model repository %s: %s", root, e)
            model_dirs = []
        for model_dir in model_dirs:
            if (model_dir / UNLOADED_MARKER).exists():
                continue
            try:
                version_dirs = sorted(p for p in model_dir.iterdir() if p.name.isdigit())
            except OSError:
                continue
            for vdir in version_dirs:
                mf = vdir / MANIFEST
                try:
                    st = mf.stat()
                except OSError:
                    continue
                sig = vdir / SIGNATURE
                sig_mtime = sig.stat().st_mtime_ns if sig.is_file() else 0
                stamp = (st.st_mtime_ns, st.st_size, sig_mtime)
                stamps[mf] = stamp
                old = previous.get(mf)
                if old is not None and self._stamps.get(mf) == stamp:
                    found[(old.name, old.version)] = old
                    continue
                offer = self._load(vdir, stamp)
                if offer is not None:
                    found[(offer.name, offer.version)] = offer
        self._offers = found
        self._stamps = stamps

    def _load(self, vdir: Path, stamp: tuple[int, int, int]) -> Offer | None:
        mf = vdir / MANIFEST
        try:
            data = mf.read_bytes()
            manifest = Manifest.loads(data)
            if manifest.name != vdir.parent.name or str(manifest.version) != vdir.name:
                raise InvalidArgument(
                    f"manifest says {manifest.name}/{manifest.version} but lives in "
                    f"{vdir.parent.name}/{vdir.name}"
                )
            sig_path = vdir / SIGNATURE
            signature = sig_path.read_bytes() if sig_path.is_file() else b""
        except (OSError, InvalidArgument) as e:
            key = (mf, stamp)
            if key not in self._warned:  # once per file version, not once per rescan
                self._warned.add(key)
                log.warning("skipping package %s: %s", vdir, e)
            return None
        return Offer(manifest.name, manifest.version, manifest, data, signature, vdir)

    def offers(self) -> list[Offer]:
        """Every offered package, sorted by (name, version)."""
        self.refresh()
        return [self._offers[k] for k in sorted(self._offers)]

    def versions(self, name: str) -> list[int]:
        self.refresh()
        return sorted(v for (n, v) in self._offers if n == name)

    def get(self, name: str, version: int | None = None) -> Offer:
        """The offer for ``name`` at ``version`` (latest if None); NotFound names what exists."""
        versions = self.versions(name)
        if not versions:
            # Triton's words too: its clients look for "Request for unknown model"
            raise NotFound(f"unknown model {name!r} (Request for unknown model: not in the repository)")
        if version is None:
            version = versions[-1]
        offer = self._offers.get((name, int(version)))
        if offer is None:
            raise NotFound(f"model {name!r} has no version {version} (has: {', '.join(map(str, versions))})")
        return offer

    def artifact(self, name: str, version: int, target_id: str) -> ArtifactInfo:
        offer = self.get(name, version)
        info = offer.manifest.artifacts.get(target_id)
        if info is None:
            have = ", ".join(offer.targets) or "none"
            raise NotFound(f"model {name}/{version} has no artifact for target {target_id!r} (has: {have})")
        return info

    def artifact_sha256(self, name: str, version: int, target_id: str) -> str | None:
        """The manifest's digest for a target, or None if the model/version/target is not offered."""
        # on the scheduling path (per node, per request): plain lookups, no error building
        self.refresh()
        offer = self._offers.get((name, int(version)))
        info = offer.manifest.artifacts.get(target_id) if offer is not None else None
        return info.sha256 if info is not None else None

    # ------------------------------------------------------------- artifacts

    def _open_verified(self, offer: Offer, info: ArtifactInfo) -> tuple[BinaryIO, int]:
        label = f"{offer.name}/{offer.version} {info.target_id} ({info.file})"
        path = (offer.path / info.file).resolve()
        if offer.path.resolve() not in path.parents:
            log.error("artifact %s: path escapes the package; refusing to serve it", label)
            raise DataLoss(f"artifact {label} is not inside its package on the gateway")
        try:
            f = open(path, "rb")
        except OSError as e:
            log.error("artifact %s cannot be read: %s", label, e)
            raise DataLoss(f"artifact {label} is missing or unreadable on the gateway") from None
        try:
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                ok = self._verified.get(path) == stamp
            if not ok:
                h = hashlib.sha256()
                while block := f.read(CHUNK_BYTES):
                    h.update(block)
                actual = h.hexdigest()
                if actual != info.sha256 or st.st_size != info.size:
                    log.error(
                        "artifact %s is corrupt on the gateway disk: sha256 %s, size %d; manifest says %s, size %d",
                        label, actual, st.st_size, info.sha256, info.size,
                    )
                    raise DataLoss(
                        f"artifact {label} is corrupt on the gateway: sha256 {actual[:16]}… does not match "
                        f"the manifest's {info.sha256[:16]}…"
                    )
                with self._lock:
                    self._verified[path] = stamp
            return f, st.st_size
        except BaseException:
            f.close()
            raise

    def chunks(self, name: str, version: int, target_id: str, sha256: str, offset: int = 0,
               chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        """Stream an artifact from ``offset``. All checks run before the first chunk is produced.

        At ``offset == size`` one empty chunk is produced, so a resuming client learns the size.
        """
        if not name:
            raise InvalidArgument("model_name is empty")
        if version <= 0:
            raise InvalidArgument(f"model_version must be a positive integer, got {version}")
        if not target_id:
            raise InvalidArgument("target_id is empty")
        info = self.artifact(name, version, target_id)
        if sha256.lower() != info.sha256:
            raise NotFound(
                f"model {name}/{version} target {target_id!r} has no artifact with sha256 {sha256!r} "
                f"(the manifest lists {info.sha256})"
            )
        if offset < 0 or offset > info.size:
            raise InvalidArgument(f"offset {offset} is out of range for an artifact of {info.size} bytes")
        f, size = self._open_verified(self.get(name, version), info)
        return self._read(f, size, offset, chunk_bytes)

    @staticmethod
    def _read(f: BinaryIO, size: int, offset: int, chunk_bytes: int) -> Iterator[Chunk]:
        with f:
            f.seek(offset)
            if offset == size:
                yield Chunk(offset, b"", size)
                return
            while offset < size:
                data = f.read(min(chunk_bytes, size - offset))
                if not data:  # file shrank under us after the check
                    raise DataLoss("artifact changed on the gateway while it was being sent; retry")
                yield Chunk(offset, data, size)
                offset += len(data)
