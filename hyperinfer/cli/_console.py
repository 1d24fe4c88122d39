"""The shared consoles live in :mod:`hyperinfer.console` (used below cli/ too)."""

from hyperinfer.console import err, out  # noqa: F401
