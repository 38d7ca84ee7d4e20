"""The typer app and its entry point: every error a user can cause is one line."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from notifyworker.errors import ConfigError, NotifyWorkerError
from notifyworker.safetext import visible

app = typer.Typer(
    help="A background-jobs service that lives inside PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point: the CLI, with notifyworker's errors as one line each."""
    try:
        try:
            app()
        except BaseExceptionGroup as group:
            # An error inside the worker's nurseries arrives wrapped; alone, it is one line too.
            raise _alone(group) from None
    except ConfigError as exc:
        _fail(exc, code=2)
    except NotifyWorkerError as exc:
        _fail(exc, code=1)
    except KeyboardInterrupt:
        # Ctrl-C before the worker installed its own handler (say, while the
        # embedded PostgreSQL starts): nothing was claimed, so just leave.
        print("notifyworker: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The group's only notifyworker error, or the group itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], NotifyWorkerError):
        return leaves[0]
    return group


def _fail(exc: Exception, code: int) -> NoReturn:
    # A message may quote a row or a setting: one line, no control character obeyed.
    print(f"notifyworker: error: {visible(str(exc))}", file=sys.stderr)
    raise SystemExit(code)
