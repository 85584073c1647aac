"""Distributed training costs: DDP (ZeRO-0) vs ZeRO-2 vs ZeRO-3 on 2 workers, and Ray's overhead.

    python benchmarks/bench_distributed.py                 # records "Distributed (issue 5)" in RESULTS.md
    python benchmarks/bench_distributed.py --no-record --steps 6

1. ZeRO stages: a Llama built from a config, wide enough (hidden 1024, 4 layers,
   about 52M parameters) that fp32 weights + gradients + Adam's two moments (16
   bytes a parameter, ~0.8 GB) dominate a worker's memory. Each stage trains the same
   steps on the bundled pairs with 2 CPU workers; each worker records its peak RSS,
   its RSS at train begin (engine built, before the first step allocates Adam's state),
   and the time of each step after two warm-up steps.
2. Ray overhead: the demo's tiny model trained for the same steps by ``RewardTrainer``
   in this process, and by ``rayreward.run.fit.fit`` with 1 worker (ZeRO-0):
   the end-to-end wall time (data, workers, checkpoints, export) and the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _measure import machine, record_section  # noqa: E402

SECTION = "Distributed (issue 5)"
HIDDEN, LAYERS, BATCH, MAX_LENGTH = 768, 4, 4, 64


def make_callback(out_dir: str):
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        """Per worker: RSS after init, peak RSS, step times (after 2 warm-up steps)."""

        def __init__(self):
            self.times, self.start, self.init_rss = [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            import psutil

            self.init_rss = psutil.Process().memory_info().rss

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > 2:
                self.times.append(time.perf_counter() - self.start)

        def on_train_end(self, args, state, control, **kwargs):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            with open(os.path.join(out_dir, f"rank{args.process_index}.json"), "w") as f:
                json.dump({"peak_rss": peak, "init_rss": self.init_rss, "step_times": self.times}, f)

    return Measure()


def wide_model_dir(root: str) -> tuple[str, int]:
    from rayreward.core import tiny

    tokenizer = tiny.load_tokenizer()
    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=HIDDEN, num_layers=LAYERS)
    path = os.path.join(root, "wide-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def run_stage(stage: int, model_dir: str, steps: int, root: str) -> dict:
    import ray.cloudpickle

    from rayreward.run.fit import fit
    from rayreward.job.config import load_job_config

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = os.path.join(root, f"zero{stage}")
    os.makedirs(out)
    job = load_job_config(None, [
        f"model.name_or_path={model_dir}", f"deepspeed.stage={stage}", f"train.max_steps={steps}",
        f"train.per_device_train_batch_size={BATCH}", "train.eval_strategy=no", f"train.save_steps={steps}",
        "train.logging_steps=1000", "data.eval=null", f"data.max_length={MAX_LENGTH}", "data.length_policy=truncate",
        "data.tokenize_actors=1", f"storage.path={root}/runs", f"storage.name=zero{stage}",
    ])
    fit(job, callbacks=[make_callback(out)])
    ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "stage": stage,
        "peak_rss_gb": [r["peak_rss"] / 1e9 for r in ranks],
        "init_rss_gb": [r["init_rss"] / 1e9 for r in ranks],
        "step_s": statistics.median(t for r in ranks for t in r["step_times"]),
    }


def ray_overhead(steps: int, root: str) -> dict:
    import ray.cloudpickle

    from rayreward import RewardConfig

    from rayreward import RewardTrainer

    from rayreward.core import tiny
    from rayreward.run.fit import fit
    from rayreward.job.config import load_job_config

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    common = ["train.eval_strategy=no", f"train.max_steps={steps}", f"train.save_steps={steps}", "data.eval=null",
              "train.logging_steps=1000"]
    # In process: the same tiny model, data, batch size and steps, no Ray, no DeepSpeed.
    job = load_job_config(None, common)
    rows = [json.loads(line) for line in Path(job.data.train).read_text().splitlines()]
    out = os.path.join(root, "inproc")
    os.makedirs(out)
    # One thread, as a Ray worker with 1 CPU has (Ray sets OMP_NUM_THREADS to its CPUs).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    tokenizer = tiny.load_tokenizer()
    trainer = RewardTrainer(
        model=tiny.build_model("tiny-llama", tokenizer), tokenizer=tokenizer, train_dataset=rows,
        args=RewardConfig(output_dir=os.path.join(root, "inproc-out"), **{**job.train, "max_steps": steps,
                          "save_strategy": "no", "disable_tqdm": True}),
        callbacks=[make_callback(out)],
    )
    trainer.train()
    inproc_wall = time.perf_counter() - start
    torch.set_num_threads(threads)
    inproc = json.loads(Path(out, "rank0.json").read_text())
    # Through Ray: one worker, ZeRO-0 (the DeepSpeed engine, no sharding).
    out = os.path.join(root, "ray1")
    os.makedirs(out)
    job = load_job_config(None, [*common, "scaling.num_workers=1", "deepspeed.stage=0", "data.tokenize_actors=1",
                                 f"storage.path={root}/runs", "storage.name=ray1"])
    start = time.perf_counter()
    fit(job, callbacks=[make_callback(out)])
    ray_wall = time.perf_counter() - start
    ray1 = json.loads(Path(out, "rank0.json").read_text())
    return {
        "steps": steps,
        "inproc_wall_s": inproc_wall, "inproc_step_s": statistics.median(inproc["step_times"]),
        "ray_wall_s": ray_wall, "ray_step_s": statistics.median(ray1["step_times"]),
    }


def report(info: dict, params: int, stages: list[dict], overhead: dict, steps: int) -> str:
    v = info["versions"]
    lines = [
        f"Machine: {info['cpu']}, {info['nproc']} cores, no GPU; {info['date']}. "
        f"torch {v['torch']}, transformers {v['transformers']}, ray {_version('ray')}, deepspeed {_version('deepspeed')}.",
        "",
        f"ZeRO stages, 2 CPU workers x 1 CPU, Llama hidden {HIDDEN} x {LAYERS} layers ({params / 1e6:.1f}M parameters, "
        f"fp32: weights+grads+Adam = {16 * params / 1e9:.2f} GB unsharded), {BATCH} pairs per worker per step, "
        f"sequences truncated to {MAX_LENGTH} tokens, "
        f"{steps} steps (median step after 2 warm-up steps). RSS at train begin = the worker once the model "
        "is loaded and wrapped by the DeepSpeed engine, before the first step allocates Adam's moments.",
        "",
        "| ZeRO stage | peak RSS, rank 0 / 1 (GB) | RSS at train begin (GB) | peak - begin (GB) | step time (s) |",
        "|---|---|---|---|---|",
    ]
    for s in stages:
        peak, init = s["peak_rss_gb"], s["init_rss_gb"]
        lines.append(f"| {s['stage']} | {' / '.join(f'{p:.2f}' for p in peak)} | {' / '.join(f'{p:.2f}' for p in init)} "
                     f"| {' / '.join(f'{p - i:.2f}' for p, i in zip(peak, init))} | {s['step_s']:.2f} |")
    o = overhead
    lines += [
        "",
        f"Ray overhead: the demo's tiny Llama, {o['steps']} steps of 16 pairs, no eval, on the same data, "
        "1 torch thread in both.",
        "",
        "| run | end-to-end wall (s) | median step (s) |",
        "|---|---|---|",
        f"| RewardTrainer in process (tokenize + train) | {o['inproc_wall_s']:.1f} | {o['inproc_step_s']:.3f} |",
        f"| rayreward fit, 1 Ray worker, ZeRO-0 (data, workers, checkpoint, export) | {o['ray_wall_s']:.1f} "
        f"| {o['ray_step_s']:.3f} |",
        "",
        "The end-to-end difference is fixed cost (Ray start-up of tokenizer actors and the worker, DeepSpeed's",
        "init, checkpoint upload, export), not per step; the 2-core machine is shared, so timings vary.",
        "One thread in both on purpose: a first run left the in-process trainer at torch's default 2 threads",
        "while other jobs shared the 2 cores, and it measured 1.25 s a step, 60x slower (oversubscribed threads).",
    ]
    return "\n".join(lines)


def _version(pkg: str) -> str:
    from importlib import metadata

    return metadata.version(pkg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stages", default="0,2,3")
    p.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    info = machine()
    with tempfile.TemporaryDirectory(prefix="rr-bench-") as root:
        model_dir, params = wide_model_dir(root)
        stages = [run_stage(int(s), model_dir, args.steps, root) for s in args.stages.split(",")]
        overhead = ray_overhead(args.steps * 3, root)
    ray.shutdown()
    text = report(info, params, stages, overhead, args.steps)
    print(text)
    if not args.no_record:
        record_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
