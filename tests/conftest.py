"""Shared fixtures: small models built with onnx.helper and compiled once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# TVM's pool and ONNX Runtime share two cores here; keep both explicit.
os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("TVM_BIND_THREADS", "0")


@pytest.fixture(scope="session")
def small_onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """A model repository shared by the session's compiled packages."""
    return tmp_path_factory.mktemp("repository")


_compiled: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def compiled_small(repository, small_onnx_dir):
    """compiled_small(name, targets=("cpu-x86_64",)) -> ModelPackage, compiled once per session."""
    from hyperinfer import zoo
    from hyperinfer.compile import compile_model

    def get(name: str, targets=("cpu-x86_64",)):
        key = (name, tuple(targets))
        if key not in _compiled:
            path, shapes = zoo.build_small(name, small_onnx_dir)
            pkg_name = name if tuple(targets) == ("cpu-x86_64",) else f"{name}-{'-'.join(targets)}"
            _compiled[key] = compile_model(path, pkg_name, out_dir=repository, targets=list(targets),
                                           input_shapes=shapes, progress=False, force=True)
        return _compiled[key]

    return get


@pytest.fixture(scope="session")
def ppocr_paths():
    """Paths of the PP-OCR ONNX models (downloads the rapidocr wheel from PyPI once)."""
    from hyperinfer import zoo

    return zoo.fetch_ppocr()


# ---------------------------------------------------------------- PostgreSQL (tests/pg_server.py)


@pytest.fixture(scope="session")
def postgresql_cluster():
    """A throwaway PostgreSQL server for the session. Skipped only outside CI when the server
    binaries or the driver are missing; in CI (CI=true) that is a failure."""
    from pg_server import Cluster, find_bin_dir

    missing = None
    if find_bin_dir() is None:
        missing = "PostgreSQL server binaries not found (apt-get install postgresql; scripts/setup.sh does as root)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {missing}")
        pytest.skip(missing)
    with Cluster() as pg:
        yield pg


@pytest.fixture
def postgresql_url(postgresql_cluster) -> str:
    """URL of a fresh, empty PostgreSQL schema."""
    return postgresql_cluster.fresh_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_location(request, tmp_path) -> str:
    """A fresh gateway database on each backend: an SQLite path or a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "gw.db")
    return request.getfixturevalue("postgresql_url")
