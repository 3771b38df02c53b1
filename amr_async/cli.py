"""The `amr-async` command line.

Each stage that has commands owns them in its own `cli.py` with a
`register(subparsers)` function; this module only lists those registrars.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from amr_async import config
from amr_async.emulator import cli as emulator_cli
from amr_async.journal import cli as journal_cli
from amr_async.moduledb import cli as moduledb_cli
from amr_async.pipeline import cli as pipeline_cli
from amr_async.pipeline import export_cli, instructions_cli
from amr_async.sandbox import cli as sandbox_cli
from amr_async.scheduler import cli as scheduler_cli

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _demo(args: argparse.Namespace) -> int:
    from amr_async.demo import run_demo

    return run_demo(out_dir=args.out_dir)


def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="distil the 164 HumanEval prompts with AMR-Evol against the local emulator"
    )
    demo.add_argument("--out-dir", type=Path, default=Path("out"), help="where to write (out/)")
    demo.set_defaults(func=_demo)


def _config_show(args: argparse.Namespace) -> int:
    try:
        file = config.config_file(args.config, os.environ)
        loaded = config.load(file=file, flags=config.read_flags(args))
    except config.ConfigError as exc:
        print(f"amr-async config: {exc}", file=sys.stderr)
        return 2
    print(config.show(loaded))
    return 0


def _register_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cfg = sub.add_parser(
        "config", help="the effective configuration (file < environment < flags), no secrets"
    )
    actions = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print every key's effective value and where it came from",
        description=config.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_flags(show)
    show.set_defaults(func=_config_show)


# One line per stage that has commands (keep sorted by command name).
REGISTRARS: list[Registrar] = [
    _register_config,
    _register_demo,
    scheduler_cli.register,
    emulator_cli.register,
    pipeline_cli.register,
    export_cli.register,
    instructions_cli.register,
    journal_cli.register,
    sandbox_cli.register,
    moduledb_cli.register,
]


class _VersionAction(argparse.Action):
    """`--version`, with the version looked up only when asked (importlib.metadata costs
    ~0.1 s of every start-up otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings=option_strings,
            dest=dest,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        import amr_async

        print(f"amr-async {amr_async.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amr-async",
        description="Distil coding instructions into training responses with AMR-Evol.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


def exit_with(code: int) -> NoReturn:
    """End the `amr-async` process with `code`, without the collector's last walk.

    At exit the interpreter's cyclic collector walks every object the command left alive
    (~0.1 s after a 542-item run); frozen, they are freed by reference counts alone. So a
    command closes what it writes before it returns: nothing may wait on a finaliser.
    """
    gc.freeze()
    sys.exit(code)


def console() -> NoReturn:
    """The `amr-async` executable."""
    exit_with(main())


if __name__ == "__main__":
    console()
