"""``rayreward evaluate``: accuracy, reward statistics and calibration of a reward model."""

from __future__ import annotations

from rayreward.runtime.console import add_console_arguments
from rayreward.commands._scoring_args import actor_pool, add_inference, add_model_and_data, positive_int

HELP = ("Evaluate a reward model on preference pairs: accuracy, rewards, margin, calibration (ECE), "
        "accuracy by length and group; writes metrics.json, report.md and figures. With --suite, score "
        "RewardBench, RewardBench 2 or RM-Bench as their official code does, for one or more models.")


def add_arguments(parser) -> None:
    from rayreward.evaluation.suites import SUITES

    add_model_and_data(parser, suites=True)
    parser.add_argument("--suite", action="append", default=None, metavar="SUITE", choices=list(SUITES),
                        help=f"score a public benchmark ({', '.join(SUITES)}); repeat for several; writes "
                             "SUITE.json, SUITE_rewards.parquet and SUITE.png under --out")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write metrics.json, report.md and PNG figures here (default: print only)")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="print the first N pairs with their rewards and P(chosen)")
    parser.add_argument("--group-column", metavar="COL", default=None,
                        help="report accuracy per value of COL (default: the first of group, subset, kind, "
                             "source, category, domain that the data has)")
    parser.add_argument("--bins", type=positive_int, default=10, metavar="N",
                        help="calibration bins over P(preferred) in [0.5, 1] (default: %(default)s)")
    parser.add_argument("--save-normalization", action="store_true",
                        help="store the mean and std of the rewards in the model's config.json "
                             "(used by `rayreward score --normalize`)")
    add_inference(parser)
    add_console_arguments(parser)


def run(args) -> int:
    import os
    import sys
    import tempfile

    from rayreward.data.sources import DataSourceError
    from rayreward.evaluation.evaluate import evaluate
    from rayreward.evaluation.model_ref import resolve_model
    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.core.metrics import format_headline
    from rayreward.runtime import storage
    from rayreward.core.samples import format_table
    from rayreward.runtime.console import Console
    from rayreward.evaluation.score import scoring_session
    from rayreward.job.preflight import check_scoring, check_storage

    if args.suite:
        from rayreward.commands._suite_eval import run_suites

        return run_suites(args)
    # 1. check what can be checked before Ray starts
    if len(args.model) != 1 or not args.data or len(args.data) != 1:
        print("rayreward evaluate: give one --model and one --data (several models need --suite)", file=sys.stderr)
        return 2
    args.model, args.data = args.model[0], args.data[0]
    if args.show < 0:
        print(f"rayreward evaluate: --show: got {args.show}; expected a number >= 0", file=sys.stderr)
        return 2
    found = check_scoring(args.model, args.data, pairs_only=True, prompt_column=args.prompt_column,
                          revision=args.revision)
    if args.out:
        found.problems += check_storage(args.out, "--out")
    found.raise_if_any("the evaluation's inputs")
    # 2. score and measure
    try:
        # Ray's and Ray Data's output goes to a log file (-v: here).
        log = (storage.join(args.out, "rayreward.log") if args.out
               else os.path.join(tempfile.gettempdir(), f"rayreward-evaluate-{os.getpid()}.log"))
        with Console(log, verbose=args.verbose):
            # Downloads and adapter merges happen here, before Ray starts.
            model = resolve_model(args.model, args.revision)
            with scoring_session(args.address):
                result = evaluate(
                    model, args.data, out_dir=args.out, show=args.show, group_column=args.group_column,
                    batch_tokens=args.batch_tokens, max_length=args.max_length, n_bins=args.bins,
                    save_normalization=args.save_normalization, prompt_column=args.prompt_column,
                    pool=actor_pool(args),
                )
    except (FileNotFoundError, DataSourceError, DataFormatError, BadRowError, ValueError) as exc:
        print(f"rayreward evaluate: {exc}", file=sys.stderr)
        return 2
    # 3. report
    m = result.metrics
    if result.samples is not None:
        print(format_table(result.samples))
    print(f"{m['model']} on {m['data']}: {format_headline(result.headline)}")
    print(f"rewards: chosen {m['chosen_mean']:.3f} +- {m['chosen_std']:.3f}, "
          f"rejected {m['rejected_mean']:.3f} +- {m['rejected_std']:.3f}")
    if m["truncated"]:
        print(f"{m['truncated']} pairs were longer than the model's limit and kept their last tokens")
    if "saved_to" in m["normalization"]:
        print(f"reward mean {m['normalization']['mean']:.4f} and std {m['normalization']['std']:.4f} "
              f"saved to {m['normalization']['saved_to']}")
    if result.paths:
        print(f"wrote {', '.join(str(p) for p in result.paths.values())}")
    return 0
