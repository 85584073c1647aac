"""``rayreward export CHECKPOINT OUT``: a training checkpoint as a plain Hugging Face model."""

from __future__ import annotations

HELP = ("Export a checkpoint (local folder or s3:// URI) to a Hugging Face model folder: LoRA merged, "
        "ZeRO-3 shards gathered, safetensors, with the tokenizer.")


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint-NNNNNN folder of a run (path or URI)")
    parser.add_argument("out", help="the folder to write (path or URI); replaced if it exists")
    parser.add_argument("--base-model", help="base model of a LoRA checkpoint (default: the one it was trained on)")


def run(args) -> int:
    from rayreward.core.checkpoint import export_checkpoint
    from rayreward.checks.scoring import check_export

    check_export(args.checkpoint, args.out, args.base_model).raise_if_any("the export's inputs")
    export_checkpoint(args.checkpoint, args.out, base_model=args.base_model)
    print(f"exported {args.checkpoint} -> {args.out} "
          "(load it with AutoModelForSequenceClassification.from_pretrained)")
    return 0
