"""Where a packed training step spends its time (issue 17): one profile per trainer and attention backend.

    python benchmarks/profile_packed.py --pairs 96 --runs trl,dense,segment

Trains the bench_trl.py decoder (random-init Llama, 4 layers, hidden 256) on hh-rlhf
harmless pairs under ``torch.profiler``, with TRL's RewardTrainer (``trl``) or
rayreward's in-process trainer with an attention backend (``dense``, ``segment``), and
sorts the CPU time into: batch assembly (``pack_pairs`` in the collator),
attention-mask building, attention (forward and backward kernels), the linear layers,
the embedding, the optimizer, the reward read-out, and the rest (norms, rotary,
activations, copies, Python overhead). Prints a markdown table of each category's
share, its milliseconds per step and its microseconds per computed token: a trainer
that computes a third of the tokens should spend a third of the time in every
category that scales with tokens; the per-step ones (optimizer) do not shrink.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import _trl_run  # noqa: E402

# Profiler op names by category; an op counts in the first category that names it.
CATEGORIES = {
    "attention": ("attention", "sdpa", "flash", "flex", "_efficient", "softmax", "baddbmm", "bmm"),
    "linear layers": ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"),
    "embedding": ("embedding",),
    "optimizer": ("adam", "optimizer", "_foreach", "clip_grad", "norm_"),
}
LABELS = ("rr::pack_pairs", "rr::attention_mask", "rr::attention_layout", "rr::reward_readout")


def _labelled(fn, label):
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    return wrapper


_LABELLED = False


def _label_rayreward_functions() -> None:
    global _LABELLED
    if _LABELLED:
        return
    from rayreward.core import attention, packed
    from rayreward.data import packing

    # Labels only: the functions run unchanged inside a profiler range.
    packing.pack_pairs = _labelled(packing.pack_pairs, "rr::pack_pairs")
    packed.packed_attention_mask = _labelled(packed.packed_attention_mask, "rr::attention_mask")
    attention.build_layout = _labelled(attention.build_layout, "rr::attention_layout")
    packed.read_rewards = _labelled(packed.read_rewards, "rr::reward_readout")
    _LABELLED = True


def profile(run: str, pairs: int, seed: int = 42) -> dict:
    """``run``: ``trl``, or a rayreward attention backend (``dense``, ``segment``)."""
    tok = _trl_run.load_tokenizer()
    model = _trl_run.build_model("llama", tok, seed)
    rows = _trl_run.read_rows("train", pairs)
    spec = dict(impl="trl" if run == "trl" else "rayreward", batch_size=8, epochs=1, learning_rate=1e-4,
                max_length=512, seed=seed)
    if run != "trl":
        _label_rayreward_functions()
        spec["features"] = dict(attention_backend=run)
    tally = _trl_run.Tally()
    with tempfile.TemporaryDirectory() as out:
        trainer = _trl_run.make_trainer(spec, model, tok, rows, tally, out)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    spent = {label: 0.0 for label in (*LABELS, *CATEGORIES, "rest")}
    for e in events:
        if e.key in LABELS:
            spent[e.key] = e.cpu_time_total  # inclusive: everything the labelled function ran
            continue
        cat = next((c for c, names in CATEGORIES.items() if any(n in e.key.lower() for n in names)), "rest")
        spent[cat] += e.self_cpu_time_total
    rest = sorted((e for e in events if e.key not in LABELS
                   and not any(n in e.key.lower() for names in CATEGORIES.values() for n in names)),
                  key=lambda e: -e.self_cpu_time_total)[:8]
    # The labelled ranges contain ops counted above; take them out of those categories' share.
    labelled = sum(spent[k] for k in LABELS)
    spent["rest"] = max(0.0, total - labelled - sum(spent[c] for c in CATEGORIES))
    return {"backend": run, "wall_s": wall, "total_cpu_s": total / 1e6, "steps": tally.batches,
            "tokens": tally.computed, "share": {k: v / total for k, v in spent.items()},
            "ms_per_step": {k: v / 1e3 / max(1, tally.batches) for k, v in spent.items()},
            "us_per_token": {k: v / max(1, tally.computed) for k, v in spent.items()},
            "top_rest": [(e.key, e.self_cpu_time_total / total) for e in rest]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--runs", "--backends", default="trl,dense,segment",
                   help="comma-separated: trl and/or rayreward attention backends")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    results = [profile(b, args.pairs) for b in args.runs.split(",")]
    keys = list(results[0]["share"])
    print("| | " + " | ".join(r["backend"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    print("| train wall (s) | " + " | ".join(f"{r['wall_s']:.1f}" for r in results) + " |")
    print("| profiled CPU (s) | " + " | ".join(f"{r['total_cpu_s']:.1f}" for r in results) + " |")
    print("| steps / tokens computed | " + " | ".join(f"{r['steps']} / {r['tokens']}" for r in results) + " |")
    for k in keys:
        print(f"| {k}: share, ms/step, us/token | "
              + " | ".join(f"{100 * r['share'][k]:.1f}%, {r['ms_per_step'][k]:.1f}, {r['us_per_token'][k]:.2f}"
                           for r in results) + " |")
    for r in results:
        print(f"{r['backend']}: largest ops in 'rest': "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["top_rest"]))
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
