"""Which packed-attention backend to train with on CPU: segment, dense and banded, by thread count.

    python benchmarks/bench_attention_cpu.py                  # records "CPU attention backends (issue 17)"
    python benchmarks/bench_attention_cpu.py --pairs 600 --repeats 2 --threads 1,2 --no-record

rayreward's in-process trainer on bench_trl.py's random-init Llama (4 layers, hidden 256),
the first hh-rlhf harmless pairs, padding-free + shared-prefix packing; only
``attention_backend`` changes. Each run is a fresh process (``_trl_run.py``); the
backends alternate (segment, dense, banded, segment, ...) so that a drift of the machine's
load hits all alike. Reported: pairs/s (wall) and pairs per CPU-second, the median of the
repeats, and each backend against dense.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _measure import machine, publish  # noqa: E402
from bench_trl import run_one  # noqa: E402

SECTION = "CPU attention backends (issue 17)"
BACKENDS = ("segment", "dense", "banded")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=600, help="hh-rlhf train rows per run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    common = dict(impl="rayreward", model="llama", train_pairs=args.pairs, eval_pairs=50, batch_size=8, epochs=1,
                  learning_rate=1e-4, max_length=512, seed=42, bf16=False)
    load_before = os.getloadavg()
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
        for _ in range(args.repeats):
            for backend in BACKENDS:
                r = run_one({**common, "threads": threads, "label": f"{backend}, {threads} thread(s)",
                             "features": {"attention_backend": backend}})
                runs[backend].append(r)
        med = {b: (statistics.median(r["pairs_trained"] / r["train_s"] for r in runs[b]),
                   statistics.median(r["pairs_trained"] / r["train_cpu_s"] for r in runs[b])) for b in BACKENDS}
        rows.append((threads, med))
    load_after = os.getloadavg()
    info = machine()
    lines = [f"Machine: {info['cpu']}, {info['nproc']} cores, {info['date']}; load average (1/5/15 min) "
             f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} before, "
             f"{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after.",
             f"Command: `python benchmarks/bench_attention_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             f" ({args.pairs} pairs a run, {args.repeats} runs per backend and thread count, alternating; medians).",
             "", "| torch threads | backend | pairs/s | vs dense | pairs per CPU-s | vs dense |",
             "| --- | --- | --- | --- | --- | --- |"]
    for threads, med in rows:
        dw, dc = med["dense"]
        for b in BACKENDS:
            w, c = med[b]
            lines.append(f"| {threads} | {b} | {w:.2f} | {w / dw:.2f}x | {c:.2f} | {c / dc:.2f}x |")
    return publish(SECTION, lines, record=not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
