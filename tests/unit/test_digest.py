"""The canonical tensor digest (design §4) is a wire format: nodes, gateways and offline
auditors must agree on it byte for byte. These values pin it (computed with the original,
field-by-field implementation), so a faster one cannot change it."""

from __future__ import annotations

import numpy as np

from hyperinfer.verify.digest import tensors_digest


def test_digest_is_pinned():
    t = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "mask": np.array([[True, False]]),
         "s": np.array(7, np.int64), "e": np.zeros((0, 4), np.float16), "be": np.array([1.5, -2.0], ">f8")}
    assert tensors_digest(list(t), t) == "18c89846c0b744a39cef471887be309090135266aee8367197ef42f8e65148be"
    assert tensors_digest([], {}) == "da4123b8fa3ed7d30774d29b1135fb83b9473c19052d75182c0af48d08350b97"


def test_layout_does_not_matter_only_values():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = np.asfortranarray(a)
    assert tensors_digest(["a"], {"a": strided}) == tensors_digest(["a"], {"a": a})
    assert tensors_digest(["a"], {"a": a[:, ::2]}) == tensors_digest(["a"], {"a": a[:, ::2].copy()})
    assert tensors_digest(["a"], {"a": a.astype(">f4")}) == tensors_digest(["a"], {"a": a})
    assert tensors_digest(["a"], {"a": a.reshape(6, 4)}) != tensors_digest(["a"], {"a": a})
