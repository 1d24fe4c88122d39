"""The ``hyperinfer`` command.

Each subcommand lives in its own module with a ``register(app)`` function and
stays a thin adapter over a library function. User errors become one
``Error: ...`` line on stderr and a non-zero exit code here, in one place.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="hyperinfer",
    help="Compile models with TVM, serve them on a verified pool of nodes, call them over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# one module per command group; each registers its own commands
_COMMAND_MODULES = [
    "compile_cmd",
    "models_cmd",
    "keys_cmd",
    "operators_cmd",
    "node_cmd",
    "gateway_cmd",
    "pool_cmd",
    "infer_cmd",
    "audit_cmd",
    "economics_cmd",
    "up_cmd",
    "demo_cmd",
    "tune_cmd",
]

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"hyperinfer.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command group not built yet
        if _e.name != f"hyperinfer.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    from hyperinfer.errors import HyperinferError

    try:
        result = app(args=argv, standalone_mode=False)
        # with standalone_mode=False, typer.Exit(code) comes back as the return value
        return result if isinstance(result, int) else 0
    except HyperinferError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception as e:  # usage errors and anything unexpected: one line, no traceback
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # typer/click usage error: usage line plus message
            return e.exit_code
        if os.environ.get("HYPERINFER_DEBUG"):
            raise
        print(f"Error: internal error ({type(e).__name__}: {e}); set HYPERINFER_DEBUG=1 for a traceback",
              file=sys.stderr)
        return 70


def entrypoint() -> None:
    sys.exit(main())
