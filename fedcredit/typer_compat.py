"""Argument help in `--help` with the typer that Flower allows and the click that the rest of the stack needs.

flwr 1.42 pins typer < 0.21, and huggingface-hub (under flwr-datasets) needs click >= 8.4.2. typer 0.20's
TyperArgument sets `self.help` and then calls click.Argument.__init__, which since click 8.3 takes a `help` of its
own and sets it to None: every argument's help vanished from `--help` (e.g. `verify RUN_DIR` showed no text). This
sets it again after click's constructor. Remove it once Flower allows a typer that passes `help` to click.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument

_original_init = TyperArgument.__init__


def _init_keeping_help(self: TyperArgument, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    if self.help is None and kwargs.get("help") is not None:
        self.help = kwargs["help"]


def keep_argument_help() -> None:
    """Idempotent: patch TyperArgument once."""
    if TyperArgument.__init__ is not _init_keeping_help:
        TyperArgument.__init__ = _init_keeping_help  # type: ignore[method-assign]
