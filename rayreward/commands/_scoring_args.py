"""Command-line options shared by ``rayreward evaluate`` and ``rayreward score``."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; expected a positive integer")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a positive number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {value}; expected a positive number")
    return value


MODEL_HELP = ("the reward model: a model folder (save_pretrained), a training run's folder, a checkpoint, a PEFT "
              "adapter folder, an ensemble folder, a Hugging Face hub id (org/name) or an object-store folder "
              "(s3://, gs://; downloaded once to ~/.cache/rayreward, or RAYREWARD_CACHE)")


def add_model_and_data(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP, suites: bool = False) -> None:
    """``--model``, ``--revision`` and ``--data``; with ``suites``, both repeat (several
    models side by side, one data source per suite)."""
    add_revision(parser)
    if not suites:
        parser.add_argument("--model", required=True, metavar="MODEL", help=model_help)
        parser.add_argument("--data", required=True, metavar="SOURCE",
                            help="a .jsonl/.json/.parquet/.csv file, a directory of them, or a glob")
        return
    parser.add_argument("--model", required=True, metavar="MODEL", action="append",
                        help=model_help + "; with --suite, repeat it to compare several models")
    parser.add_argument("--data", metavar="SOURCE", action="append", default=None,
                        help="a .jsonl/.json/.parquet/.csv file, a directory of them, or a glob; with --suite, "
                             "the suite's data in its public schema or a hub id (default: the public data set), "
                             "SUITE=SOURCE when several suites are given")


def add_revision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default=None, metavar="REV",
                        help="branch, tag or commit of a hub id's model (default: main)")


def add_inference(parser: argparse.ArgumentParser) -> None:
    from rayreward.evaluation.scorer import DEFAULT_BATCH_TOKENS

    group = parser.add_argument_group("inference")
    group.add_argument("--batch-tokens", type=positive_int, default=DEFAULT_BATCH_TOKENS, metavar="N",
                       help="most tokens (rows x longest row) in one forward pass (default: %(default)s)")
    group.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                       help="texts longer than N tokens keep their last N (default: the model's limit)")
    group.add_argument("--prompt-column", default="prompt", metavar="COL",
                       help="column holding the prompt (default: %(default)s)")
    group.add_argument("--num-actors", type=positive_int, default=1, metavar="N",
                       help="scoring actors, one model each (default: %(default)s)")
    group.add_argument("--cpus-per-actor", type=positive_float, default=1.0, metavar="N",
                       help="CPUs per actor (default: %(default)s)")
    group.add_argument("--gpus-per-actor", type=float, default=None, metavar="N",
                       help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    group.add_argument("--batch-rows", type=positive_int, default=256, metavar="N",
                       help="rows per Ray Data batch sent to an actor (default: %(default)s)")
    group.add_argument("--address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def actor_pool(args):
    from rayreward.evaluation.score import ActorPool

    return ActorPool(args.num_actors, args.cpus_per_actor, args.gpus_per_actor, args.batch_rows)
