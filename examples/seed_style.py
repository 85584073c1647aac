"""A reward-model script written for the seed's API (TRL's older one), run on rayreward.

The model and tokenizer are loaded by hand, the pairs are tokenized into
``input_ids_chosen``/``attention_mask_chosen``/... columns, and ``tokenizer=``,
``max_length=`` and ``RewardDataCollatorWithPadding`` go to the trainer, as scripts for
TRL before 1.0 did:

    python examples/seed_style.py MODEL_FOLDER [OUTPUT_DIR]

A checkpoint saved in bf16 loads as bf16 here (``from_pretrained`` keeps the checkpoint's
dtype); the trainer still trains float32 master weights, so every parameter changes.
"""

import json
import sys
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rayreward import RewardConfig, RewardDataCollatorWithPadding, RewardTrainer

model_path = sys.argv[1]
output_dir = sys.argv[2] if len(sys.argv) > 2 else "runs/seed_style"
data_file = Path(__file__).resolve().parent.parent / "rayreward" / "sample_data" / "train.jsonl"

tokenizer = AutoTokenizer.from_pretrained(model_path)
model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
rows = [json.loads(line) for line in data_file.read_text().splitlines()[:48]]


def tokenize(row):
    chosen = tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)
    rejected = tokenizer(row["prompt"] + row["rejected"] + tokenizer.eos_token)
    return {
        "input_ids_chosen": chosen["input_ids"],
        "attention_mask_chosen": chosen["attention_mask"],
        "input_ids_rejected": rejected["input_ids"],
        "attention_mask_rejected": rejected["attention_mask"],
    }


dataset = Dataset.from_list(rows).map(tokenize, remove_columns=["prompt", "chosen", "rejected", "margin"])

trainer = RewardTrainer(
    model=model,
    args=RewardConfig(output_dir=output_dir, max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
                      save_strategy="no", report_to=[]),
    tokenizer=tokenizer,
    train_dataset=dataset,
    data_collator=RewardDataCollatorWithPadding(tokenizer),
    max_length=512,
)
before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
trainer.train()
changed = sum(not p.detach().equal(before[name]) for name, p in trainer.model.named_parameters())
print(f"changed {changed} of {len(before)} parameters")
trainer.save_model(output_dir)
