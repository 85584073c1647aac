"""Train a reward model with the plain API, in the spirit of TRL's ``reward_modeling.py``.

Builds a model and its tokenizer, a ``RewardConfig`` and (optionally) a ``LoraConfig``,
trains a ``RewardTrainer`` on preference pairs, evaluates it, prints a few scored eval
pairs and saves the result. With no arguments it trains the built-in tiny Llama on the
bundled sample pairs (polite, on-topic answers preferred over rude or off-topic ones)
in well under a minute on 2 CPU cores:

    python examples/reward_modeling.py
    python examples/reward_modeling.py --lora --epochs 2 --output_dir runs/tiny-lora
    python examples/reward_modeling.py --model_name_or_path path/to/model \\
        --train_file train.jsonl --eval_file test.jsonl --max_length 512

Data files are JSON lines with ``chosen`` and ``rejected`` (texts or message lists), an
optional ``prompt`` and an optional numeric ``margin``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rayreward.data.tokenizer import SAMPLE_DATA_DIR


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", default="builtin:tiny-llama",
                   help="A model path or hub name (loaded with num_labels=1), or builtin:tiny-llama|tiny-gpt2|tiny-bert.")
    p.add_argument("--train_file", default=str(SAMPLE_DATA_DIR / "train.jsonl"), help="Training pairs (JSON lines).")
    p.add_argument("--eval_file", default=str(SAMPLE_DATA_DIR / "eval.jsonl"), help="Evaluation pairs (JSON lines).")
    p.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training pairs.")
    p.add_argument("--max_eval_samples", type=int, default=None, help="Use only the first N evaluation pairs.")
    p.add_argument("--output_dir", default="runs/reward_modeling", help="Where checkpoints and the model go.")
    p.add_argument("--epochs", type=float, default=1.0, help="Training epochs.")
    p.add_argument("--max_steps", type=int, default=-1, help="Stop after this many steps (overrides --epochs).")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="1e-3 suits the tiny models; use ~1e-5 for real ones.")
    p.add_argument("--batch_size", type=int, default=16, help="Pairs per device and step.")
    p.add_argument("--max_length", type=int, default=512, help="Pairs with a longer side are filtered out.")
    p.add_argument("--lora", action="store_true", help="Train a LoRA adapter (and the reward head) instead of all weights.")
    p.add_argument("--lora_r", type=int, default=16, help="LoRA rank.")
    p.add_argument("--lora_target_modules", nargs="*", default=None,
                   help="Modules LoRA adapts; PEFT's default for the architecture when not given.")
    p.add_argument("--num_print_samples", type=int, default=4, help="Eval pairs shown with their rewards.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_model_and_tokenizer(name: str):
    """A built-in tiny model with the bundled tokenizer, or a pretrained one with one output."""
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer, is_builtin

    if is_builtin(name):
        tokenizer = builtin_tokenizer()
        return tiny.build_model(name, tokenizer), tokenizer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1)
    return model, tokenizer


def main(argv=None) -> dict:
    args = parse_args(argv)
    from datasets import Dataset

    from rayreward import RewardConfig

    from rayreward import RewardTrainer

    # 1. Training arguments: everything TrainingArguments takes, plus the reward fields.
    config = RewardConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size * 2,
        max_length=args.max_length,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=20,
        report_to=[],
        seed=args.seed,
    )

    # 2. Data: any format rayreward accepts; rows are checked and tokenized by the trainer.
    train_dataset = Dataset.from_json(args.train_file)
    eval_dataset = Dataset.from_json(args.eval_file)
    if args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(args.max_train_samples, len(train_dataset))))
    if args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(args.max_eval_samples, len(eval_dataset))))

    # 3. Model and tokenizer, and the optional LoRA config (the reward head is trained too).
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                 target_modules=args.lora_target_modules)

    # 4. Trainer.
    trainer = RewardTrainer(
        model=model,
        args=config,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
    )

    # 5. Train and evaluate.
    trainer.train()
    metrics = trainer.evaluate()
    print(f"eval_accuracy={metrics['eval_accuracy']:.4f} eval_loss={metrics['eval_loss']:.4f}")

    # 6. Look at a few scored pairs.
    trainer.visualize_samples(args.num_print_samples)

    # 7. Save the model (or adapter with its head) and the tokenizer.
    trainer.save_model(args.output_dir)
    print(f"saved to {Path(args.output_dir).resolve()}")
    return metrics


if __name__ == "__main__":
    main()
