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
