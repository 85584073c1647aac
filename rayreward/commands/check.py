"""``rayreward check``: validate a job config without starting Ray."""

from __future__ import annotations


from rayreward.commands._job_args import add_job_arguments, load_job, preflight_job

HELP = ("Check a job config (and overrides), its data, model and storage, and print the resolved config; "
        "starts no cluster.")


def add_arguments(parser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--config-only", action="store_true",
                        help="check the config alone, without opening its data, model or storage "
                             "(for a config written for another machine)")


def run(args) -> int:
    from rayreward.job.config import step_plan, value_sources
    from rayreward.config.tree import ConfigError, load_yaml

    job, extras = load_job(args, extra_sections=("tune",))
    sweep = None
    if "tune" in extras:
        problems = _tune_problems(extras["tune"], job)
        if problems:
            raise ConfigError(problems, args.config, what="tune section")
        import dataclasses

        from rayreward.config.tree import build
        from rayreward.job.tune_section import TuneSection

        # The data checks of a sweep see its metric and swept losses.
        sweep = dataclasses.replace(job, tune=build(TuneSection, extras["tune"], "tune", []))
    if not args.config_only:
        preflight_job(args, sweep or job, search_space=sweep.tune.search_space if sweep else None)
    sources = value_sources(job, load_yaml(args.config) if args.config else {}, args.overrides)
    print("# the job as it will run; after each value, where it comes from (override: the command line, file: "
          f"{args.config or 'no file'}, demo: the built-in demo's settings, derived: set by a rule, default)")
    print(render_with_sources(sources), end="")
    if "tune" in extras:
        # The tune section was taken out before the job was built: show the file's own.
        print(yaml_dump({"tune": extras["tune"]}), end="")
    if job.train["max_steps"] > 0:
        print(f"# {step_plan(job, None).max_steps} steps (train.max_steps)")
    print(f"# {args.config or 'defaults'}: OK")
    return 0


def render_with_sources(sources: dict) -> str:
    """YAML of ``{dotted key: (value, origin)}`` with each origin as a trailing comment."""
    lines, opened = [], []
    for key, (value, origin) in sources.items():
        parts = key.split(".")
        common = 0
        while common < min(len(opened), len(parts) - 1) and opened[common] == parts[common]:
            common += 1
        opened = opened[:common]
        for depth in range(common, len(parts) - 1):
            lines.append(f"{'  ' * depth}{parts[depth]}:")
            opened.append(parts[depth])
        text = yaml_dump(value).strip()
        lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {text}".ljust(56) + f"  # {origin}")
    return "\n".join(lines) + "\n"


def yaml_dump(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16)
    return text.removesuffix("\n...\n") if text.endswith("\n...\n") else text


def _tune_problems(section, job) -> list[str]:
    """A sweep file's ``tune:`` section, checked by the tune command's own validator
    (its shape, then the swept keys and every trial config against the rest of ``job``)."""
    from rayreward.commands.tune import validate_tune_section

    return list(validate_tune_section(section, job))
