"""Shared rich consoles: tables and progress go to stderr unless they are the command's output."""

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
