"""The `handler-cli` command line: the Typer app and the table of its thin commands.

A command is turned into a click command only when it runs or a help page lists it:
converting all sixteen up front cost every one-document step 7 ms of start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import typer
from typer.core import TyperGroup

from handler_cli.commands import doctor, pipeline, poll, reply, requests, serve, setup
from handler_cli.steps import STEPS

STYLE: dict[str, Any] = dict(
    add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown"
)

# name -> (help panel, the command's function, or the Typer of a command group)
COMMANDS: dict[str, tuple[str, Callable[..., None] | typer.Typer]] = {
    **{step.name: ("Pipeline steps", pipeline.step_command(step))
       for step in STEPS.values()},
    "run": ("Pipeline", pipeline.run),
    "poll": ("Replies", poll.poll),
    "reply": ("Replies", reply.reply),
    "reply-intent": ("Replies", reply.reply_intent),
    "serve": ("Webhook", serve.serve),
    "requests": ("Webhook", requests.app),
    "doctor": ("Operations", doctor.doctor),
    "setup": ("Operations", setup.app),
}


def build(name: str) -> Any:
    """The click command of one table entry, converted as if the app held only it."""
    panel, target = COMMANDS[name]
    part = typer.Typer(**STYLE)
    if isinstance(target, typer.Typer):
        part.add_typer(target, name=name, rich_help_panel=panel)
    else:
        part.command(name, rich_help_panel=panel)(target)
    return typer.main.get_group(part).commands[name]


class _Built(MutableMapping[str, Any]):
    """The group's commands, each converted on first access; every name is always listed
    (help, and the "did you mean" of a mistyped command)."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = build(name)
        return self._built[name]

    def __setitem__(self, name: str, value: Any) -> None:
        raise TypeError("commands are declared in handler_cli.cli.COMMANDS")

    def __delitem__(self, name: str) -> None:
        raise TypeError("commands are declared in handler_cli.cli.COMMANDS")

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class _Group(TyperGroup):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Built()


app = typer.Typer(
    name="handler-cli",
    cls=_Group,
    help=(
        "Intake desk of the 3D-modelling studio: classify, file, price and answer client "
        "requests.\n\n"
        "Every step reads request documents as JSON on stdin (one object, or one per line) "
        "and writes them on stdout, so steps pipe together:\n\n"
        "  cat req.json | handler-cli classify | handler-cli ticket\n\n"
        "`handler-cli run` chains them all. Logs go to stderr. Backends are live when their "
        "settings are present (see `handler-cli doctor`), local otherwise."
    ),
    no_args_is_help=True,
    **STYLE,
)


@app.callback()
def _root() -> None:
    """The group itself takes no options; each command has its own."""

