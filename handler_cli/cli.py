"""The `handler-cli` command line: the Typer app and the table of its thin commands.

A command is turned into a click command only when it runs or a help page lists it:
converting all sixteen up front cost every one-document step 7 ms of start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from handler_cli.commands import pipeline
from handler_cli.commands._common import BEFORE_COMMAND, QuietOpt, StrictOpt, VerboseOpt
from handler_cli.steps import STEPS

STYLE: dict[str, Any] = dict(
    add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# name -> (help panel, the command's function, or the Typer of a command group, or where to
# import either from when it is first built: "module:name", so start-up does not load it)
COMMANDS: dict[str, tuple[str, Callable[..., None] | typer.Typer | str]] = {
    **{step.name: ("Pipeline steps", pipeline.step_command(step))
       for step in STEPS.values()},
    "run": ("Pipeline", pipeline.run),
    "poll": ("Replies", "handler_cli.commands.poll:poll"),
    "reply": ("Replies", "handler_cli.commands.reply:reply"),
    "reply-intent": ("Replies", "handler_cli.commands.reply:reply_intent"),
    "serve": ("Webhook", "handler_cli.commands.serve:serve"),
    "requests": ("Requests", "handler_cli.commands.requests:app"),
    "stats": ("Requests", "handler_cli.commands.stats:stats"),
    "forget": ("Requests", "handler_cli.commands.retention:forget"),
    "doctor": ("Operations", "handler_cli.commands.doctor:doctor"),
    "setup": ("Operations", "handler_cli.commands.setup:app"),
}


def build(name: str) -> Any:
    """The click command of one table entry, converted as if the app held only it."""
    panel, target = COMMANDS[name]
    if isinstance(target, str):
        import importlib

        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    part = typer.Typer(**STYLE)
    if isinstance(target, typer.Typer):
        part.add_typer(target, name=name, rich_help_panel=panel)
    else:
        part.command(name, rich_help_panel=panel)(target)
    command = typer.main.get_group(part).commands[name]
    readable(command)
    return command


# How a value's type reads in help, click's classic words: `--file PATH`, `--port INTEGER`.
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH",
               "Path": "PATH", "file": "FILE", "directory": "FOLDER", "int range": "INTEGER",
               "float range": "NUMBER"}


def readable(command: Any, *, subcommands: bool = True) -> None:
    """Help as a person reads it: a flag shows no type (typer's default is `<bool>`), an
    option its value's word (`PATH`, not `<list[Path]>`), an argument its upper-case name."""
    import typer._click as click

    if subcommands:
        for sub in getattr(command, "commands", {}).values():
            readable(sub)
    ctx = click.Context(command, help_option_names=STYLE["context_settings"]["help_option_names"])
    help_option = command.get_help_option(ctx)  # made once, then cached by the command
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if isinstance(param, TyperOption):
            if param.is_flag:
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _type_word(param, ctx)
        elif isinstance(param, TyperArgument) and param.metavar is None:
            word = _type_word(param, ctx)
            param.metavar = param.name.upper() if param.name else None
            param.display_type_rich = _constant(word)  # type: ignore[method-assign,assignment]


def _constant(word: str) -> Callable[[Any], str]:
    return lambda ctx: word


def _type_word(param: Any, ctx: Any) -> str:
    label = param.display_type(ctx)
    inner = label.strip("<>").removeprefix("list[").removesuffix("]")
    if "|" in inner:  # choices: shown as they are typed
        return "[" + inner + "]"
    return _TYPE_WORDS.get(inner, inner.upper())


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

    def format_help(self, ctx: Any, formatter: Any) -> None:
        readable(self, subcommands=False)  # the root's options; each command's when built
        super().format_help(ctx, formatter)


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
    **{**STYLE, "add_completion": True},
)


def _show_version(value: bool) -> None:
    if value:
        from handler_cli import __version__

        typer.echo(f"handler-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Show the version and exit.")] = False,
    quiet: QuietOpt = False, verbose: VerboseOpt = False, strict: StrictOpt = False,
) -> None:
    """-q, -v and --strict here apply to the command that follows, as if given after it."""
    BEFORE_COMMAND.quiet, BEFORE_COMMAND.verbose, BEFORE_COMMAND.strict = quiet, verbose, strict

