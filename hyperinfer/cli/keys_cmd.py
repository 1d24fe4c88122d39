"""``hyperinfer keys``: create and show Ed25519 keys (node, gateway, publisher)."""

from __future__ import annotations

from pathlib import Path

import typer

from hyperinfer.errors import AlreadyExists

keys_app = typer.Typer(help="Create and show Ed25519 keys (node, gateway, publisher).", no_args_is_help=True)


@keys_app.command("show")
def show(path: Path = typer.Argument(..., help="Private key file.")) -> None:
    """Print a key's id (fingerprint) and public key."""
    from hyperinfer.cli._console import out
    from hyperinfer.identity import describe, load_key

    d = describe(load_key(path))
    out.print(f"id: {d['id']}")
    out.print(f"public_key: {d['public_key']}")


@keys_app.command("create")
def create(path: Path = typer.Argument(..., help="Where to write the new private key (mode 0600).")) -> None:
    """Create a new key; refuses to overwrite an existing file."""
    from hyperinfer.cli._console import out
    from hyperinfer.identity import describe, load_or_create_key

    if path.exists():
        raise AlreadyExists(f"{path} already exists; not overwriting a key")
    key, _ = load_or_create_key(path)
    d = describe(key)
    out.print(f"created {path}")
    out.print(f"id: {d['id']}")
    out.print(f"public_key: {d['public_key']}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
