"""``rayreward evaluate --suite``: public benchmarks for one or more models.

Steps: check the options, the models and every suite's rows (before Ray) -> score all
suites' completions per model on Ray Data -> print one table per suite and write its
JSON, parquet and chart.
"""

from __future__ import annotations

import sys


def _data_by_suite(suites: list[str], data: list[str] | None) -> dict[str, str | None] | str:
    """``--data`` values per suite, or an error message."""
    out: dict[str, str | None] = {s: None for s in suites}
    for value in data or []:
        name, sep, source = value.partition("=")
        if sep and name in out:
            out[name] = source
        elif len(suites) == 1 and not (sep and name in ("rewardbench", "rewardbench2", "rm-bench")):
            out[suites[0]] = value
        else:
            return (f"--data {value}: with several suites write SUITE=SOURCE with SUITE one of "
                    f"{', '.join(suites)}")
    return out


def run_suites(args) -> int:
    import os
    import tempfile

    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.data.sources import DataSourceError
    from rayreward.evaluation.score import scoring_session
    from rayreward.evaluation.suites.report import format_table, write_suite
    from rayreward.evaluation.suites.runner import load_suites, run_suites as score_all
    from rayreward.job.preflight import check_model_ref, check_storage
    from rayreward.runtime.console import Console

    # 1. options, models and data, before Ray starts
    suites = list(dict.fromkeys(args.suite))
    data = _data_by_suite(suites, args.data)
    if isinstance(data, str):
        print(f"rayreward evaluate: {data}", file=sys.stderr)
        return 2
    ignored = [flag for flag, on in (("--show", args.show), ("--save-normalization", args.save_normalization),
                                     ("--group-column", args.group_column)) if on]
    if ignored:
        print(f"rayreward evaluate: {', '.join(ignored)} cannot be used with --suite", file=sys.stderr)
        return 2
    problems = []
    if args.out:
        problems += check_storage(args.out, "--out")
    try:
        for model in args.model:
            problems += check_model_ref(model, args.revision, "--model", ensemble=True)
        loaded = load_suites(suites, data)
    except (FileNotFoundError, DataSourceError, DataFormatError, ValueError) as exc:
        problems.append(str(exc))
    if problems:
        print("rayreward evaluate: " + "\n".join(problems), file=sys.stderr)
        return 2
    for d in loaded:
        print(f"[rayreward] {d.name}: {len(d.rows)} rows from {d.where}")
    # 2. score
    log = os.path.join(args.out or tempfile.gettempdir(), "rayreward.log" if args.out
                       else f"rayreward-evaluate-{os.getpid()}.log")
    try:
        from rayreward.commands._scoring_args import actor_pool

        if args.out:
            os.makedirs(args.out, exist_ok=True)
        with Console(log, verbose=args.verbose), scoring_session(args.address):
            results, runs = score_all(loaded, args.model, actor_pool(args), args.batch_tokens, args.max_length,
                                      args.revision)
    except (FileNotFoundError, DataSourceError, DataFormatError, BadRowError, ValueError) as exc:
        print(f"rayreward evaluate: {exc}", file=sys.stderr)
        return 2
    # 3. report
    for run in runs:
        rate = run.unique / run.seconds if run.seconds else float("nan")
        trunc = f"; {run.truncated} longer than the model's limit kept their last tokens" if run.truncated else ""
        print(f"[rayreward] {run.model}: {run.unique} completions scored ({run.rendering}) in {run.seconds:.1f} s, "
              f"{rate:.1f}/s{trunc}")
    for res in results:
        print(f"\n{res.data.name} (scores in %, rules: {next(iter(res.scores.values()))['rules']})")
        print(format_table(res))
        for model, s in res.scores.items():
            notes = []
            if s["missing"]:
                notes.append(f"no data for {', '.join(s['missing'])}")
            if s["nan_rewards"]:
                notes.append(f"{s['nan_rewards']} NaN rewards in {s['nan_rows']} rows, counted wrong")
            if notes:
                print(f"  {model}: {'; '.join(notes)}")
        if args.out:
            paths = write_suite(res, runs, args.out)
            print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
