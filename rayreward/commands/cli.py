"""The ``rayreward`` command line.

Each subcommand lives in ``rayreward/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Running
``rayreward`` with no arguments runs the demo: ``rayreward train`` on the defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = ("train", "check", "export", "tune", "evaluate", "score", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayreward",
        description="Train, sweep, evaluate and use reward models on Ray. "
        "With no arguments, trains the demo reward model on an embedded local Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"rayreward.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"rayreward.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "RAY_ADDRESS" not in os.environ and not any(a.startswith("--address") for a in argv):
        # The command will start an embedded Ray: keep it on loopback. Without this Ray
        # swaps 127.0.0.1 for the machine's routable address. Ray reads it at import,
        # so it is set before anything imports ray; a driver joining a real cluster
        # must not have it (it would register as 127.0.0.1).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    parser = build_parser()
    if not argv:
        argv = ["train"]
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
