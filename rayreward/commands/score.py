"""``rayreward score``: add rewards to every row of a data set (batch inference on Ray Data)."""

from __future__ import annotations

from rayreward.runtime.console import add_console_arguments
from rayreward.commands._scoring_args import actor_pool, add_inference, add_model_and_data

HELP = ("Score texts, prompt/response rows, conversations or preference pairs with a reward model; "
        "writes the rows plus reward (or reward_chosen/reward_rejected) to .parquet or .jsonl.")


def add_arguments(parser) -> None:
    add_model_and_data(parser)
    parser.add_argument("--out", required=True, metavar="PATH", help="output file, .parquet or .jsonl")
    parser.add_argument("--normalize", action="store_true",
                        help="report (reward - mean) / std with the statistics stored in the model's config "
                             "(by training, or by `rayreward evaluate --save-normalization`)")
    parser.add_argument("--text-column", metavar="COL", default=None,
                        help="the answer column of single answers when it is not text/response/completion/messages")
    add_inference(parser)
    add_console_arguments(parser)


def run(args) -> int:
    import os
    import sys

    from rayreward.data.sources import DataSourceError
    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.runtime.console import Console
    from rayreward.evaluation.model_ref import resolve_model
    from rayreward.evaluation.score import OUTPUT_SUFFIXES, scoring_session, score
    from rayreward.job.preflight import check_scoring, check_storage

    # 1. check what can be checked before Ray starts
    if not args.out.endswith(OUTPUT_SUFFIXES):
        print(f"rayreward score: --out: got {args.out!r}; expected a .parquet or .jsonl file", file=sys.stderr)
        return 2
    found = check_scoring(args.model, args.data, pairs_only=False, text_column=args.text_column,
                          prompt_column=args.prompt_column, revision=args.revision)
    found.problems += check_storage(args.out if "://" in args.out else os.path.dirname(os.path.abspath(args.out)),
                                    "--out")
    found.raise_if_any("the scoring's inputs")
    # 2. score
    try:
        # Ray's and Ray Data's output goes to a log file (-v: here).
        with Console(args.out + ".log", verbose=args.verbose):
            # Downloads and adapter merges happen here, before Ray starts.
            model = resolve_model(args.model, args.revision)
            with scoring_session(args.address):
                result = score(
                    model, args.data, args.out, normalize=args.normalize, batch_tokens=args.batch_tokens,
                    max_length=args.max_length, text_column=args.text_column, prompt_column=args.prompt_column,
                    pool=actor_pool(args),
                )
    except (FileNotFoundError, DataSourceError, DataFormatError, BadRowError, ValueError) as exc:
        print(f"rayreward score: {exc}", file=sys.stderr)
        return 2
    # 3. report
    what = ", ".join(result.layout.reward_columns)
    print(f"wrote {result.rows} rows with {what} to {result.path}")
    if result.truncated:
        print(f"{result.truncated} rows were longer than the model's limit and kept their last tokens")
    return 0
