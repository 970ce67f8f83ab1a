"""The entry point of `handler-cli` and `python -m handler_cli`.

A one-document step is mostly start-up, and a good part of start-up was the garbage
collector tracing the ~100,000 objects that importing typer and pydantic allocates, during
the imports and again at exit, though they live as long as the process. So collection is
off while the command line is imported, and what was imported is then frozen out of every
later collection (`gc.freeze`); the exit skips its final full collection the same way.

Pydantic also looks for plugins when it builds its first model; handler-cli uses none, so
PYDANTIC_DISABLE_PLUGINS is set to `__all__` unless the operator has set it otherwise. Even
disabled, the lookup imports its module, which imports `importlib.metadata` (and with it
`email`, `zipfile`, `csv`, `socket`): 10 ms of a 150 ms start-up. When every plugin is
disabled that module can only answer "none", so that answer is registered in its place.

Last, the exit: once the command is over, the interpreter would tear down every module and
object one by one (4 ms), memory the process gives back whole anyway. So the output is
flushed, the exit handlers run (`atexit`: logging's flush, child processes joined), and the
process ends there (`os._exit`), unless a thread still runs, which a normal exit waits for.
`bench/bench_cli.py` measures the effect of all four.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
import types
from typing import NoReturn

# pydantic/plugin/_loader.py (pydantic 2.14.4, read 29 Nov 2026): get_plugins() returns ()
# for these values of the variable; _schema_validator.py imports it on the first model.
_ALL_PLUGINS_OFF = ("__all__", "1", "true")
_PLUGIN_LOADER = "pydantic.plugin._loader"


def skip_plugin_lookup() -> None:
    """With every pydantic plugin disabled, answer "no plugins" without importing the finder."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if os.environ["PYDANTIC_DISABLE_PLUGINS"] in _ALL_PLUGINS_OFF:
        loader = types.ModuleType(_PLUGIN_LOADER, "No pydantic plugins: all are disabled.")
        loader.get_plugins = tuple  # type: ignore[attr-defined]
        sys.modules.setdefault(_PLUGIN_LOADER, loader)


def exit_now(code: str | int | None) -> NoReturn:
    """End the process as `sys.exit(code)` would, without tearing the interpreter down."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)  # a normal exit waits for them
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # the reader left, or the stream is closed
        pass
    # What Py_FinalizeEx would run first (CPython 3.11-3.13: `atexit._run_exitfuncs`, kept
    # since Python 3.0 though undocumented); the module and object teardown is what is skipped.
    atexit._run_exitfuncs()
    os._exit(code or 0)


def main() -> None:
    skip_plugin_lookup()
    gc.disable()
    try:
        from handler_cli.cli import app
    finally:
        gc.freeze()
        gc.enable()
    try:
        app(prog_name="handler-cli")
    except SystemExit as done:
        gc.freeze()
        exit_now(done.code)


if __name__ == "__main__":
    main()
