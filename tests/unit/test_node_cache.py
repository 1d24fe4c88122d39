"""Artifact cache: verified before visible, corrupt downloads refused and retried, resume."""

from __future__ import annotations

import hashlib
import os

import pytest

from hyperinfer.errors import DataLoss, NotFound
from hyperinfer.node.cache import ArtifactCache, Chunk

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def source(data: bytes = DATA, chunk: int = 64_000, total: int | None = None, calls: list | None = None):
    """A chunk source over ``data``, like Pool.FetchArtifact: starts at the given offset."""

    def fetch(offset: int):
        if calls is not None:
            calls.append(offset)
        for pos in range(offset, len(data), chunk):
            yield Chunk(pos, data[pos:pos + chunk], len(data) if total is None else total)

    return fetch


def cache(tmp_path, **kw) -> ArtifactCache:
    kw.setdefault("progress", False)
    return ArtifactCache(tmp_path / "artifacts", sleep=lambda s: None, **kw)


def test_good_download_is_visible_and_reused(tmp_path):
    c = cache(tmp_path)
    calls: list[int] = []
    path = c.get(SHA, len(DATA), source(calls=calls))
    assert path.read_bytes() == DATA and path.name == f"{SHA}.so"
    assert not list(path.parent.glob("*.part"))
    assert c.get(SHA, len(DATA), source(calls=calls)) == path
    assert calls == [0]  # second get came from the cache


def test_corrupt_download_is_deleted_and_retried(tmp_path):
    c = cache(tmp_path, retries=2)
    bad = bytearray(DATA)
    bad[1234] ^= 0xFF
    attempts = iter([source(bytes(bad)), source()])
    calls: list[int] = []

    def flaky(offset):
        calls.append(offset)
        return next(attempts)(offset)

    path = c.get(SHA, len(DATA), flaky)
    assert path.read_bytes() == DATA
    assert calls == [0, 0]  # the bad download was discarded, not resumed


def test_always_corrupt_is_refused_and_nothing_visible(tmp_path):
    c = cache(tmp_path, retries=2)
    bad = bytearray(DATA)
    bad[-1] ^= 1
    calls: list[int] = []
    with pytest.raises(DataLoss, match="after 3 attempts.*does not match"):
        c.get(SHA, len(DATA), source(bytes(bad), calls=calls))
    assert calls == [0, 0, 0]
    assert not any((tmp_path / "artifacts").iterdir())
    assert c.lookup(SHA, len(DATA)) is None


def test_broken_stream_resumes_from_offset(tmp_path):
    c = cache(tmp_path, retries=3)
    calls: list[int] = []
    state = {"n": 0}

    def breaks_once(offset):
        calls.append(offset)
        for ch in source()(offset):
            yield ch
            state["n"] += 1
            if state["n"] == 2 and len(calls) == 1:
                raise DataLoss("stream reset")  # what the pool client raises for a broken stream

    path = c.get(SHA, len(DATA), breaks_once)
    assert path.read_bytes() == DATA
    assert calls == [0, 128_000]


def test_leftover_partial_from_previous_run_is_resumed(tmp_path):
    c = cache(tmp_path)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / f"{SHA}.part").write_bytes(DATA[:100_000])
    calls: list[int] = []
    assert c.get(SHA, len(DATA), source(calls=calls)).read_bytes() == DATA
    assert calls == [100_000]


def test_corrupt_partial_is_discarded_after_check(tmp_path):
    c = cache(tmp_path)
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / f"{SHA}.part").write_bytes(b"x" * 100_000)
    calls: list[int] = []
    assert c.get(SHA, len(DATA), source(calls=calls)).read_bytes() == DATA
    assert calls == [100_000, 0]


def test_size_disagreement_and_overlong_stream_are_refused(tmp_path):
    c = cache(tmp_path, retries=0)
    with pytest.raises(DataLoss, match="gateway says"):
        c.get(SHA, len(DATA), source(total=len(DATA) + 1))
    with pytest.raises(DataLoss, match="more data"):
        c.get(SHA, len(DATA) - 10, source(total=len(DATA) - 10))


def test_wrong_offset_is_refused(tmp_path):
    c = cache(tmp_path, retries=0)

    def skips(offset):
        yield Chunk(offset + 10, DATA[offset + 10:], len(DATA))

    with pytest.raises(DataLoss, match="offset"):
        c.get(SHA, len(DATA), skips)


def test_permanent_errors_are_not_retried(tmp_path):
    c = cache(tmp_path, retries=3)
    calls: list[int] = []

    def missing(offset):
        calls.append(offset)
        raise NotFound("no such artifact")
        yield  # pragma: no cover

    with pytest.raises(NotFound):
        c.get(SHA, len(DATA), missing)
    assert calls == [0]


def test_damaged_cache_entry_is_replaced(tmp_path):
    c = cache(tmp_path)
    path = c.get(SHA, len(DATA), source())
    path.write_bytes(b"tampered" + DATA[8:])
    calls: list[int] = []
    assert c.get(SHA, len(DATA), source(calls=calls)).read_bytes() == DATA
    assert calls == [0]


def test_bad_digest_string_is_rejected(tmp_path):
    with pytest.raises(Exception, match="sha256"):
        cache(tmp_path).path_for("../../etc/passwd")


def test_progress_log_line(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hyperinfer.node.cache")
    cache(tmp_path).get(SHA, len(DATA), source(), label="m/1 [cpu]")
    assert any("MB/s" in r.getMessage() and "m/1 [cpu]" in r.getMessage() for r in caplog.records)


def test_zip_artifacts_keep_their_suffix(tmp_path):
    c = cache(tmp_path)
    path = c.get(SHA, len(DATA), source(), suffix=".zip")
    assert path.name == f"{SHA}.zip" and path.read_bytes() == DATA
    assert c.lookup(SHA, len(DATA), suffix=".zip") == path and c.lookup(SHA, len(DATA)) is None
    with pytest.raises(Exception, match="file type"):
        c.path_for(SHA, "/../x")
