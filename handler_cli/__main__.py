"""The entry point of `handler-cli` and `python -m handler_cli`.

A one-document step is mostly start-up, and a good part of start-up was the garbage
collector tracing the ~100,000 objects that importing typer and pydantic allocates, during
the imports and again at exit, though they live as long as the process. So collection is
off while the command line is imported, and what was imported is then frozen out of every
later collection (`gc.freeze`); the exit skips its final full collection the same way.

Pydantic also scans every installed distribution for plugins on the first model; handler-cli
uses none, so the scan is skipped unless PYDANTIC_DISABLE_PLUGINS is set otherwise.
`bench/bench_cli.py` measures the effect of both.
"""

from __future__ import annotations

import gc
import os


def main() -> None:
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    gc.disable()
    try:
        from handler_cli.cli import app
    finally:
        gc.freeze()
        gc.enable()
    try:
        app(prog_name="handler-cli")
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
