"""A reward-model script written for TRL 1.16, run unchanged on rayreward.

It follows TRL's docs (a model given by id, a ``datasets`` data set, ``RewardConfig``
and ``RewardTrainer`` with no tokenizer passed). The one line that differs from the TRL
version is the import; swap it back and TRL runs the same file:

    python examples/trl_style.py MODEL_ID_OR_FOLDER [OUTPUT_DIR]

At the end it prints how many parameter tensors training changed (all of them, when the
weights train in float32 as they should, whatever the checkpoint's dtype).
"""

import sys
from pathlib import Path

from datasets import load_dataset

from rayreward import RewardConfig, RewardTrainer  # with TRL: from trl import RewardConfig, RewardTrainer

model_id = sys.argv[1]
output_dir = sys.argv[2] if len(sys.argv) > 2 else "runs/trl_style"
data_file = Path(__file__).resolve().parent.parent / "rayreward" / "sample_data" / "train.jsonl"

dataset = load_dataset("json", data_files=str(data_file), split="train").select(range(48))

training_args = RewardConfig(
    output_dir=output_dir,
    max_steps=4,
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    logging_steps=2,
    save_strategy="no",
    report_to="none",
    bf16=False,  # float32 compute, so that the example also runs on a CPU (TRL turns bf16 on by default)
)
trainer = RewardTrainer(model=model_id, args=training_args, train_dataset=dataset)

before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
trainer.train()
changed = sum(not p.detach().equal(before[name]) for name, p in trainer.model.named_parameters())
print(f"changed {changed} of {len(before)} parameters")
print(f"train_dataset columns: {sorted(trainer.train_dataset.column_names)}")
trainer.save_model(output_dir)
