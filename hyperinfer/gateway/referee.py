"""The gateway's referee: ONNX Runtime on a package's cleaned model decides disputes."""

from __future__ import annotations

import threading
from typing import Any


class PackageReferee:
    """ONNX Runtime on a package's cleaned model, one session per (name, version), made on
    first use: disputes are rare, so most gateways never pay for a session."""

    def __init__(self, catalog: Any, threads: int | None = 1):
        self.catalog = catalog
        self.threads = threads
        self._lock = threading.Lock()
        self._runners: dict[tuple[str, int], Any] = {}

    def __call__(self, name: str, version: int, inputs):
        key = (name, int(version))
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                from hyperinfer.package import ModelPackage
                from hyperinfer.runtime.ort_runner import ORTRunner

                offer = self.catalog.get(name, int(version))
                package = ModelPackage(offer.path, offer.manifest, offer.manifest_bytes)
                runner = ORTRunner.for_package(package, threads=self.threads)
                self._runners[key] = runner
        return runner.run(inputs)
