"""``rayreward check``: validate a job config without starting Ray."""

from __future__ import annotations

import sys

from ._job_args import add_job_arguments, load_job

HELP = "Check a job config (and overrides) and print the resolved config; starts no cluster."


def add_arguments(parser) -> None:
    add_job_arguments(parser)


def run(args) -> int:
    import yaml

    from ..job_config import step_plan, to_dict

    job, extras = load_job(args, extra_sections=("tune",))
    if job is None:
        return 2
    if "tune" in extras:
        problems = _tune_problems(extras["tune"])
        if problems:
            print(f"rayreward check: {len(problems)} problem(s) in the tune section:\n"
                  + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            return 2
    print(yaml.safe_dump(to_dict(job), sort_keys=False), end="")
    if job.train.get("max_steps", -1) > 0:
        print(f"# {step_plan(job, None).max_steps} steps (train.max_steps)")
    print(f"# {args.config or 'defaults'}: OK")
    return 0


def _tune_problems(section) -> list[str]:
    """A sweep file's ``tune:`` section, checked by the tune command's own validator."""
    import importlib

    try:
        tune = importlib.import_module("rayreward.commands.tune")
    except ModuleNotFoundError as exc:
        if exc.name != "rayreward.commands.tune":
            raise
        return []
    validate = getattr(tune, "validate_tune_section", None)
    return list(validate(section)) if validate else []
