"""The ``rayreward`` command line.

Each subcommand lives in ``rayreward/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Running
``rayreward`` with no arguments runs the demo: ``rayreward train`` on the defaults.

Exit codes: 0 done, 2 a problem with the user's input (config, data, model, storage,
arguments), 1 an internal error, 130 interrupted. User errors print one message and
no traceback; ``--debug`` (anywhere on the line) or ``RAYREWARD_DEBUG=1`` adds it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from rayreward.runtime.ray_session import prepare_environment

SUBCOMMANDS = ("train", "check", "export", "tune", "evaluate", "score", "serve")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--version``, ``--debug`` and the list of subcommands (for ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="rayreward",
        description="Train, sweep, evaluate and use reward models on Ray. "
        "With no arguments, trains the demo reward model on an embedded local Ray.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also RAYREWARD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"rayreward.commands.{name}")
        sub.add_parser(name, help=module.HELP)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand; its options and its ``KEY=VALUE`` overrides may come in any order."""
    module = importlib.import_module(f"rayreward.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"rayreward {name}", description=module.HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of any error (also RAYREWARD_DEBUG=1)")
    parser.set_defaults(_run=module.run, command=name)
    return parser


def version() -> str:
    """rayreward's installed version."""
    from importlib import metadata

    try:
        return metadata.version("rayreward")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RAYREWARD_DEBUG", "").lower() in ("1", "true", "yes")
    argv = [a for a in argv if a != "--debug"]
    # Before anything imports ray: an empty RAY_ADDRESS means unset, an embedded Ray stays on loopback.
    prepare_environment(argv)
    if not argv:
        argv = ["train"]
    if argv[0] not in SUBCOMMANDS:
        # --help, --version, or a word that is no command (argparse names the choices).
        build_parser().parse_args(argv)
        build_parser().print_help()
        return 2
    # Subparsers cannot parse intermixed arguments, so each command has a parser of its
    # own: `rayreward train a=1 -v b=2` is the same as `rayreward train -v a=1 b=2`.
    args = command_parser(argv[0]).parse_intermixed_args(argv[1:])
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\nrayreward {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The console's reader went away (`rayreward train | head`): stop as a Unix tool
        # does (exit 141, SIGPIPE's status), with a word where it can still be read.
        if debug:
            traceback.print_exc()
        _detach_stdout()
        resume = " (re-run the same command to resume it)" if args.command in ("train", "tune") else ""
        try:
            print(f"rayreward {args.command}: stopped: its output was closed (broken pipe){resume}; send the "
                  "console to a file or through `tee` to keep it running", file=sys.stderr)
        except OSError:
            pass
        return 141
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes an exit code
        user = user_error(exc)
        if debug:
            traceback.print_exc()
        if user is not None:
            print(f"rayreward {args.command}: {user}", file=sys.stderr)
            return 2
        print(f"rayreward {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              "  (a bug in rayreward or a library it uses: run again with --debug or RAYREWARD_DEBUG=1 for the "
              "traceback, and report it)", file=sys.stderr)
        return 1


def _detach_stdout() -> None:
    """Points stdout at /dev/null, so that nothing more (Python's flush at exit included)
    writes to the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def user_error(exc: BaseException) -> BaseException | None:
    """The user's error behind ``exc`` (itself, or the cause a Ray error wraps), else None.

    User errors are the ones rayreward raises about its input, each naming the field,
    file or row and what was expected.
    """
    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.data.sources import DataSourceError
    from rayreward.checks.findings import PreflightError
    from rayreward.config.tree import ConfigError

    kinds = (ConfigError, PreflightError, DataSourceError, DataFormatError, BadRowError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, kinds):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
