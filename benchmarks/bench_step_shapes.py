"""Per computed token, what a training step costs in each trainer, by kernel, on this CPU (issue 27).

    python benchmarks/bench_step_shapes.py                       # decoder, 1 and 2 threads, records
    python benchmarks/bench_step_shapes.py --model minilm --batches 6 --threads 1 --no-record

Both trainers (TRL's RewardTrainer and rayreward's in-process one) are built on the same
model, tokenizer and hh-rlhf pairs as ``bench_trl.py``; their first training batches are
taken from their own data loaders (so the shapes are the real ones: TRL's padded rows,
rayreward's packed rows). Every measurement alternates the two trainers batch by batch,
so a drift of the machine's load hits both alike, and is divided by the tokens each
batch computes (padding included, a shared prefix once):

- *step*: the loss's forward and backward (``compute_loss`` + ``backward``; no optimizer).
- *linear*, *attention*: every ``F.linear`` and ``scaled_dot_product_attention`` call
  of one forward is recorded with its exact inputs (shapes, strides, mask), then replayed
  forward + backward alone. *rest* is the step minus the two (norms, rotary, activations,
  embedding, loss, mask building, Python).
- Hypotheses, on the same recorded tensors: the packed batch's attention with its
  boolean mask converted to an additive float mask once (instead of inside every call),
  with no mask at all (causal only: inexact, a floor), and its linear layers on the same
  tokens as one contiguous 2D matrix (does the row shape matter to the GEMM?).

The figures go to ``benchmarks/RESULTS.md`` under "Per-token cost by kernel (issue 27)".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _trl_run  # noqa: E402
from _measure import machine, publish  # noqa: E402

SECTION = "Per-token cost by kernel (issue 27)"
TRAINERS = ("trl", "rayreward")


def batches_of(impl: str, model, tok, rows, n: int, out: str) -> tuple[object, list[dict]]:
    """The trainer and its first ``n`` training batches, as its ``compute_loss`` receives them."""
    spec = dict(impl=impl, batch_size=8, epochs=1, learning_rate=1e-4, max_length=512, seed=42)
    trainer = _trl_run.make_trainer(spec, model, tok, rows, _trl_run.Tally(), out)
    loader = trainer.get_train_dataloader()
    got = []
    for batch in loader:
        got.append(trainer._prepare_inputs(batch))
        if len(got) == n:
            break
    return trainer, got


def floor_batch(trainer) -> dict:
    """One pair cut to its first 4 tokens a side, through the trainer's own collator: a
    step of (almost) no tokens, whose time is the per-step cost of running the ops at all
    (dispatch, thread start-up, the loss), whatever the batch holds."""
    item = dict(trainer.train_dataset[0])
    tiny = {k: v[:4] if isinstance(v, list) else v for k, v in item.items()}
    return trainer._prepare_inputs(trainer.data_collator([tiny]))


def computed_tokens(batch: dict) -> int:
    if "packed_input_ids" in batch:
        return batch["packed_input_ids"].numel()
    if "input_ids_chosen" in batch:
        return batch["input_ids_chosen"].numel() + batch["input_ids_rejected"].numel()
    return batch["input_ids"].numel()


def step_seconds(trainer, model, batch: dict) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return time.perf_counter() - start


class Recorder:
    """Records the inputs of every ``F.linear`` and SDPA call while active."""

    def __init__(self):
        self.linear, self.sdpa = [], []

    def __enter__(self):
        self._linear, self._sdpa = F.linear, F.scaled_dot_product_attention

        def linear(x, w, b=None):
            self.linear.append((x.detach().clone(), w.detach(), None if b is None else b.detach()))
            return self._linear(x, w, b)

        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            self.sdpa.append(dict(q=q.detach().clone(), k=k.detach().clone(), v=v.detach().clone(),
                                  attn_mask=attn_mask, is_causal=is_causal, scale=scale, **kw))
            return self._sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

        F.linear, F.scaled_dot_product_attention = linear, sdpa
        return self

    def __exit__(self, *exc):
        F.linear, F.scaled_dot_product_attention = self._linear, self._sdpa


def record(trainer, model, batch: dict) -> Recorder:
    with Recorder() as rec, torch.no_grad():
        trainer.compute_loss(model, batch)
    return rec


def replay_linear(calls, flat: bool = False) -> float:
    start = time.perf_counter()
    for x, w, b in calls:
        x = x.reshape(-1, x.shape[-1]).contiguous() if flat else x
        x = x.detach().requires_grad_(True)
        wg = w.detach().requires_grad_(True)
        y = F.linear(x, wg, None if b is None else b.detach().requires_grad_(True))
        y.backward(torch.ones_like(y))
    return time.perf_counter() - start


def replay_sdpa(calls, mask: str = "as called") -> float:
    total = 0.0
    for c in calls:
        q, k, v = (c[n].detach().requires_grad_(True) for n in ("q", "k", "v"))
        attn_mask, is_causal = c["attn_mask"], c["is_causal"]
        extra = {k_: v_ for k_, v_ in c.items() if k_ not in ("q", "k", "v", "attn_mask", "is_causal", "scale")}
        if mask == "float" and attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill_(~attn_mask, torch.finfo(q.dtype).min)
        elif mask == "none":
            attn_mask, is_causal = None, True
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=c["scale"], **extra)
        out.backward(torch.ones_like(out))
        total += time.perf_counter() - start
    return total


def measure(model_name: str, pairs: int, n_batches: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    tok = _trl_run.load_tokenizer()
    rows = _trl_run.read_rows("train", pairs)
    state, per = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for impl in TRAINERS:
            model = _trl_run.build_model(model_name, tok, 42)
            model.train()
            trainer, batches = batches_of(impl, model, tok, rows, n_batches, out)
            state[impl] = (trainer, model, batches, [record(trainer, model, b) for b in batches])
        n = min(len(state[i][2]) for i in TRAINERS)
        floors = {impl: floor_batch(state[impl][0]) for impl in TRAINERS}
        names = ("floor", "step", "linear", "attention", "linear, flat 2D", "attention, float mask", "attention, no mask")
        for impl in TRAINERS:
            per[impl] = {k: [] for k in names}
        for _ in range(repeats):
            for i in range(n):
                for impl in TRAINERS:
                    trainer, model, batches, recs = state[impl]
                    t = per[impl]
                    t["floor"].append((i, step_seconds(trainer, model, floors[impl])))
                    t["step"].append((i, step_seconds(trainer, model, batches[i])))
                    t["linear"].append((i, replay_linear(recs[i].linear)))
                    t["attention"].append((i, replay_sdpa(recs[i].sdpa)))
                    t["linear, flat 2D"].append((i, replay_linear(recs[i].linear, flat=True)))
                    t["attention, float mask"].append((i, replay_sdpa(recs[i].sdpa, "float")))
                    t["attention, no mask"].append((i, replay_sdpa(recs[i].sdpa, "none")))
        result = {}
        for impl in TRAINERS:
            trainer, model, batches, recs = state[impl]
            tokens = sum(computed_tokens(b) for b in batches[:n])
            med = {k: sum(statistics.median(s for j, s in v if j == i) for i in range(n)) for k, v in per[impl].items()}
            us = {k: 1e6 * s / tokens for k, s in med.items()}
            us["rest"] = us["step"] - us["linear"] - us["attention"]
            # The step less a no-token step's time: what scales with the tokens.
            us["step less the per-step floor"] = us["step"] - us.pop("floor")
            result[impl + "_floor_ms"] = 1e3 * med["floor"] / n
            first = recs[0].sdpa[0]
            mask = first["attn_mask"]
            result[impl] = {"us_per_token": us, "tokens": tokens, "batches": n,
                            "sdpa_shape": tuple(first["q"].shape), "linear_input": tuple(recs[0].linear[0][0].shape),
                            "mask": "none (is_causal)" if mask is None else f"{mask.dtype} {tuple(mask.shape)}",
                            "contiguous_q": first["q"].is_contiguous()}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama", help="llama (packed in rayreward) or minilm (padded in both)")
    p.add_argument("--pairs", type=int, default=160, help="hh-rlhf train rows the batches come from")
    p.add_argument("--batches", type=int, default=12, help="training batches per trainer")
    p.add_argument("--repeats", type=int, default=3, help="timings per batch (the median counts)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()
    runs = {int(t): measure(args.model, args.pairs, args.batches, args.repeats, int(t)) for t in args.threads.split(",")}
    load_after = os.getloadavg()
    info = machine()
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Machine: {info['cpu']}, {info['nproc']} cores, {info['date']}; torch {info['versions']['torch']}, "
             f"transformers {info['versions']['transformers']}, trl {info['versions']['trl']}; load average (1/5/15 min) "
             f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} before, "
             f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after.",
             f"Command: `python benchmarks/bench_step_shapes.py {cmd}` (model {args.model}; the same first training "
             f"batches of each trainer, {args.repeats} timings each, medians; microseconds per computed token).", ""]
    some = next(iter(runs.values()))
    for impl in TRAINERS:
        r = some[impl]
        lines.append(f"- {impl}: {r['batches']} batches, {r['tokens']} tokens computed; first linear input "
                     f"{r['linear_input']}, first attention call q {r['sdpa_shape']} (contiguous: {r['contiguous_q']}), "
                     f"mask {r['mask']}")
    lines += ["", "| threads | per computed token (us) | TRL | rayreward | rayreward / TRL |", "| --- | --- | --- | --- | --- |"]
    for threads, r in runs.items():
        lines.append(f"| {threads} | per-step floor (ms per step, a 4-token pair) | {r['trl_floor_ms']:.1f} | "
                     f"{r['rayreward_floor_ms']:.1f} | {r['rayreward_floor_ms'] / r['trl_floor_ms']:.2f}x |")
        for key in ("step", "step less the per-step floor", "linear", "attention", "rest", "linear, flat 2D", "attention, float mask",
                    "attention, no mask"):
            a, b = r["trl"]["us_per_token"][key], r["rayreward"]["us_per_token"][key]
            lines.append(f"| {threads} | {key} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    return publish(SECTION, lines, record=not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
