"""Reward modelling on conversational data: pairs of chats rendered with a chat template.

Conversational pairs hold lists of ``{"role", "content"}`` messages instead of text:
``prompt`` (the conversation so far) and the ``chosen`` / ``rejected`` assistant turns.
rayreward renders each side with the tokenizer's chat template (here the ChatML-style
template of the bundled tokenizer), so the reward model sees exactly the format the
policy will produce. This script turns the bundled sample pairs into chats, shows one
rendered, trains the tiny built-in model on them and scores two new replies.

    python examples/conversational.py                     # in this process, ~1 minute on 2 cores
    python examples/conversational.py --distributed       # the same data through Ray (rayreward train)
    python examples/conversational.py --write-jsonl chats.jsonl --max-steps 0
        # only writes the chats; then: rayreward train data.train=chats.jsonl data.format=conversational

With your own model, its tokenizer's chat template is used; ``data.chat_template`` (or a
``chat_template`` set on the tokenizer) replaces it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

SYSTEM = "You are a helpful, polite assistant."


def to_chat(row: dict) -> dict:
    """One bundled text pair ("Human: ...\\nAssistant:" + answers) as a conversational pair."""
    question = row["prompt"].removeprefix("Human:").removesuffix("Assistant:").strip()
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
        "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
        "margin": row["margin"],
    }


def load_chats(split: str, limit: int | None = None) -> list[dict]:
    from rayreward.data.tokenizer import SAMPLE_DATA_DIR

    with open(SAMPLE_DATA_DIR / f"{split}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [to_chat(r) for r in rows[:limit]]


def in_process(train: list[dict], eval_: list[dict], args) -> None:
    """The plain API: RewardTrainer in this process, as with TRL."""
    import torch

    from rayreward import RewardConfig

    from rayreward import RewardTrainer
    from rayreward.core.tiny import build_model
    from rayreward.data.tokenizer import builtin_tokenizer

    # 1. Tokenizer (with its chat template) and a tiny model built from a config.
    tokenizer = builtin_tokenizer()
    model = build_model("tiny-llama", tokenizer, hidden_size=64, num_layers=2, seed=0)

    # 2. Trainer: conversational pairs are detected and rendered with the template.
    out = args.output_dir or tempfile.mkdtemp(prefix="rayreward-chat-")
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=out, max_steps=args.max_steps, per_device_train_batch_size=16,
                          per_device_eval_batch_size=32, learning_rate=2e-3, lr_scheduler_type="cosine",
                          logging_steps=10, eval_strategy="no", save_strategy="no", report_to="none",
                          max_length=256, activation_checkpointing=False, use_cpu=True, seed=0,
                          disable_tqdm=True),
        tokenizer=tokenizer,
        train_dataset=train,
        eval_dataset=eval_,
    )

    # 3. Train and evaluate.
    if args.max_steps > 0:
        trainer.train()
    metrics = trainer.evaluate()
    print(f"eval_accuracy {metrics['eval_accuracy']:.3f} on {len(eval_)} held-out chat pairs "
          f"(0.5 is chance) after {args.max_steps} steps")

    # 4. Score two replies to a new conversation: the template renders them the same way.
    prompt = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": "Can you help me plan a birthday dinner?"}]
    replies = ["Of course! How many guests, and do any of them have dietary needs?",
               "No. Figure it out yourself."]
    texts = [tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": r}], tokenize=False)
             for r in replies]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    trainer.model.eval()
    with torch.no_grad():
        rewards = trainer.model(**batch.to(trainer.model.device)).logits.squeeze(-1).tolist()
    for reply, reward in zip(replies, rewards):
        print(f"reward {reward:+.3f}  {reply}")


def distributed(train_file: Path, eval_file: Path, args) -> None:
    """The job-config path: the same chats through Ray workers, as `rayreward train` runs them."""
    import ray

    from rayreward.run.fit import fit
    from rayreward.job.config import load_job_config

    job = load_job_config(None, [
        f"data.train={train_file}", f"data.eval={eval_file}", "data.format=conversational",
        "data.max_length=256", f"train.max_steps={max(args.max_steps, 1)}",
        "train.eval_steps=20", "train.save_steps=20", "scaling.num_workers=2",
        f"storage.path={args.output_dir or tempfile.mkdtemp(prefix='rayreward-chat-')}", "storage.name=chat",
    ])
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        outcome = fit(job)
    finally:
        ray.shutdown()
    print(f"eval_accuracy {outcome.metrics.get('eval_accuracy')}; model in {outcome.model_dir}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=60, help="optimizer steps (0: evaluate the untrained model)")
    parser.add_argument("--train-pairs", type=int, default=None, help="use only the first N training pairs")
    parser.add_argument("--eval-pairs", type=int, default=None, help="use only the first N eval pairs")
    parser.add_argument("--output-dir", help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--write-jsonl", metavar="PATH", help="also write the training chats as JSONL to PATH")
    parser.add_argument("--distributed", action="store_true", help="train through Ray workers instead")
    args = parser.parse_args(argv)

    # 1. Data: the bundled pairs as chats.
    train, eval_ = load_chats("train", args.train_pairs), load_chats("eval", args.eval_pairs)
    if args.write_jsonl:
        Path(args.write_jsonl).write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
        print(f"wrote {len(train)} chat pairs to {args.write_jsonl}")

    # 2. What the model sees: the chosen side of the first pair, rendered.
    from rayreward.data.tokenizer import builtin_tokenizer

    rendered = builtin_tokenizer().apply_chat_template(train[0]["prompt"] + train[0]["chosen"], tokenize=False)
    print("chosen side of pair 0, as the model reads it:\n" + rendered + "\n")

    # 3. Train.
    if args.distributed:
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(tmp) / "train.jsonl", Path(tmp) / "eval.jsonl"
            for path, rows in zip(files, (train, eval_)):
                path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            distributed(*files, args)
    else:
        in_process(train, eval_, args)


if __name__ == "__main__":
    main()
