"""``rayreward check``: validate a job config without starting Ray."""

from __future__ import annotations

import sys

from rayreward.commands._job_args import add_job_arguments, load_job, preflight_job

HELP = ("Check a job config (and overrides), its data, model and storage, and print the resolved config; "
        "starts no cluster.")


def add_arguments(parser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--config-only", action="store_true",
                        help="check the config alone, without opening its data, model or storage "
                             "(for a config written for another machine)")


def run(args) -> int:
    import yaml

    from rayreward.job.config import step_plan, to_dict

    job, extras = load_job(args, extra_sections=("tune",))
    if "tune" in extras:
        problems = _tune_problems(extras["tune"], job)
        if problems:
            print(f"rayreward check: {len(problems)} problem(s) in the tune section:\n"
                  + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            return 2
    if not args.config_only:
        preflight_job(args, job)
    resolved = to_dict(job)
    # The tune section was taken out before the job was built: show the file's own, or none.
    resolved.pop("tune", None)
    if "tune" in extras:
        resolved["tune"] = extras["tune"]
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    if job.train["max_steps"] > 0:
        print(f"# {step_plan(job, None).max_steps} steps (train.max_steps)")
    print(f"# {args.config or 'defaults'}: OK")
    return 0


def _tune_problems(section, job) -> list[str]:
    """A sweep file's ``tune:`` section, checked by the tune command's own validator
    (its shape, then the swept keys and every trial config against the rest of ``job``)."""
    import importlib

    try:
        tune = importlib.import_module("rayreward.commands.tune")
    except ModuleNotFoundError as exc:
        if exc.name != "rayreward.commands.tune":
            raise
        return []
    validate = getattr(tune, "validate_tune_section", None)
    return list(validate(section, job)) if validate else []
