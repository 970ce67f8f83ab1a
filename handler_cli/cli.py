"""The `handler-cli` command line: the Typer app, registering the thin commands."""

from __future__ import annotations

import typer

from handler_cli.commands import doctor, pipeline, poll, requests, serve, setup

app = typer.Typer(
    name="handler-cli",
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
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
pipeline.register(app)
app.command("poll", rich_help_panel="Replies")(poll.poll)
app.command("reply", rich_help_panel="Replies")(poll.reply)
app.command("reply-intent", rich_help_panel="Replies")(poll.reply_intent)
app.command("serve", rich_help_panel="Webhook")(serve.serve)
app.add_typer(requests.app, name="requests", rich_help_panel="Webhook")
app.command("doctor", rich_help_panel="Operations")(doctor.doctor)
app.add_typer(setup.app, name="setup", rich_help_panel="Operations")


def main() -> None:
    app()
