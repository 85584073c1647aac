"""Arguments and start-up shared by the commands that take a job config (train, check, tune)."""

from __future__ import annotations

import argparse
import sys


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    from rayreward.job.config import help_text

    parser.add_argument("--config", metavar="FILE", help="YAML job config; without it the demo's defaults are the base.")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. train.learning_rate=2e-5 lora.r=16")
    parser.epilog = help_text()


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray).")


def preflight_job(args, job, search_space: dict | None = None) -> None:
    """Checks the job's data, model and storage before Ray starts (``rayreward.checks.job``,
    the same checks ``fit`` and ``run_sweep`` run); prints what the user should know
    (skipped rows, identical pairs, no eval data). A sweep passes its ``search_space``
    (its swept losses are checked against the data's shape).

    Raises:
        PreflightError: every problem found, one per line.
    """
    from rayreward.checks.job import preflight_job as checks

    found = checks(job, search_space=search_space)
    for note in found.notes:
        print(f"[rayreward] note: {note}", file=sys.stderr)
    found.raise_if_any(f"the inputs of {args.config or 'the job'}")


def load_job(args, extra_sections: tuple[str, ...] = ()):
    """``(JobConfig, {extra section: value})``.

    Sections named in ``extra_sections`` (``tune`` for a sweep file) are taken out of
    the file before the job part is validated, and returned for their own checks.

    Raises:
        ConfigError: every problem of the config (the command line prints it, exit 2).
    """
    from rayreward.config.tree import load_yaml
    from rayreward.job.config import apply_overrides, job_from_dict

    raw = apply_overrides(load_yaml(args.config) if args.config else {}, args.overrides)
    extras = {name: raw.pop(name) for name in extra_sections if name in raw}
    return job_from_dict(raw, source=args.config), extras
