"""Reward serving: ``rayreward serve`` against a naive server and against offline ``score``.

The same model (a tiny Llama, hidden 256, 4 layers, the bundled tokenizer) and the same
hh-rlhf texts (the shared harmless-base test split, one text per request, as an RL loop
asks for the reward of each rollout) go through:
    - ``rayreward serve``: Ray Serve, one replica, batching across requests by tokens;
    - a naive FastAPI server (uvicorn, one process): one forward pass per request, no
      batching; what a one-file reward server does;
    - ``rayreward score`` offline (Ray Data, one actor) over all the texts at once:
      the throughput ceiling with no HTTP and no latency budget.
Clients are threads with their own HTTP session; each level of concurrency (1, 8, 32)
sends the same texts. Reported: texts/s, and p50/p99 latency of a request.

Usage: python benchmarks/bench_serve.py [--texts 400] [--cpus 1] [--no-record]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import hh_data_dir, machine, record_section  # noqa: E402

CONCURRENCY = (1, 8, 32)
NAIVE = '''
import torch
from fastapi import FastAPI, Request
from transformers import AutoModelForSequenceClassification, AutoTokenizer
torch.set_num_threads(THREADS)
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForSequenceClassification.from_pretrained(MODEL).eval()
app = FastAPI()

@app.post("/get_reward")
async def get_reward(request: Request):
    body = await request.json()
    rewards = []
    for text in body["query"]:
        ids = tok(text + tok.eos_token, return_tensors="pt")
        with torch.inference_mode():
            rewards.append(model(**ids).logits[0, 0].item())
    return {"rewards": rewards}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, texts: list[str], clients: int) -> dict:
    """Sends every text once as its own request from ``clients`` threads."""
    import requests

    def worker(k: int) -> list[float]:
        session, lat = requests.Session(), []
        for i in range(k, len(texts), clients):
            start = time.perf_counter()
            r = session.post(url, json={"query": [texts[i]]}, timeout=300)
            r.raise_for_status()
            lat.append(time.perf_counter() - start)
        return lat

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = sorted(x for part in pool.map(worker, range(clients)) for x in part)
    wall = time.perf_counter() - start
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"texts_per_s": len(texts) / wall, "p50_ms": 1000 * pick(0.5), "p99_ms": 1000 * pick(0.99)}


def wait_up(url: str, seconds: float = 180) -> None:
    import requests

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.post(url, json={"query": ["warm up"]}, timeout=10).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs (torch threads) of each server")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    import ray

    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer
    from rayreward.evaluation.score import ActorPool, score, scoring_session
    from rayreward.serve.app import launch
    from rayreward.serve.config import serve_config

    rows = [json.loads(line) for line in (hh_data_dir() / "test.jsonl").open(encoding="utf-8")]
    texts = [r["chosen"][-600:] for r in rows][: args.texts]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    tok = builtin_tokenizer()
    model_dir = tmp / "model"
    tiny.build_model("tiny-llama", tok, hidden_size=256, num_layers=4, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    threads = max(1, int(args.cpus))
    results: dict[str, dict] = {}
    load_before = os.getloadavg()

    # 1. naive FastAPI server, one forward per request
    port = free_port()
    # uvicorn imports the app by name: the model folder and threads are written into it.
    (tmp / "naive_app.py").write_text(NAIVE.replace("MODEL", repr(str(model_dir))).replace("THREADS", str(threads)))
    naive = subprocess.Popen([sys.executable, "-m", "uvicorn", "naive_app:app", "--host", "127.0.0.1",
                              "--port", str(port), "--log-level", "warning"], cwd=tmp,
                             env={**os.environ, "PYTHONPATH": str(tmp)}, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/get_reward"
        wait_up(url)
        for c in CONCURRENCY:
            results[f"naive c={c}"] = load(url, texts, c)
            print("naive", c, results[f"naive c={c}"], flush=True)
    finally:
        naive.terminate()
        naive.wait()

    # 2. rayreward serve (one replica) and 3. rayreward score, on one embedded Ray
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    try:
        served = launch(serve_config({"serve": {"models": [str(model_dir)], "name": "bench", "port": free_port(),
                                                "scaling": {"cpus_per_replica": args.cpus}}}))
        wait_up(f"{served.url}/get_reward")
        for c in CONCURRENCY:
            results[f"serve c={c}"] = load(f"{served.url}/get_reward", texts, c)
            print("serve", c, results[f"serve c={c}"], flush=True)
        from ray import serve

        stats = json.loads(__import__("requests").get(f"{served.url}/stats", timeout=30).text)
        serve.shutdown()
        src, out = tmp / "texts.jsonl", tmp / "scored.parquet"
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        start = time.perf_counter()
        with scoring_session():
            score(model_dir, str(src), out, pool=ActorPool(cpus_per_actor=args.cpus))
        wall = time.perf_counter() - start
        results["score offline"] = {"texts_per_s": len(texts) / wall, "p50_ms": None, "p99_ms": None}
        print("score", results["score offline"], flush=True)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    report(args, texts, results, stats, load_before, load_after)


def report(args, texts, results, stats, load_before, load_after) -> None:
    m = machine()
    lines = [
        f"Machine: {m['cpu']}, {m['nproc']} cores, torch {m['versions']['torch']}; {m['date']}. "
        f"Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} (other engineers' jobs share "
        "the 2 cores: absolute figures are low and noisy, the ratios in one run are the result).",
        f"Command: `python benchmarks/bench_serve.py --texts {args.texts} --cpus {args.cpus}`. Model: tiny Llama "
        f"(hidden 256, 4 layers), {len(texts)} hh-rlhf test texts (last 600 characters of `chosen`), one text per "
        f"request; each server gets {args.cpus} CPU(s).",
        "",
        "| clients | rayreward serve texts/s | naive FastAPI texts/s | ratio | serve p50 / p99 ms | naive p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        s, n = results[f"serve c={c}"], results[f"naive c={c}"]
        lines.append(f"| {c} | {s['texts_per_s']:.1f} | {n['texts_per_s']:.1f} | {s['texts_per_s'] / n['texts_per_s']:.2f}x "
                     f"| {s['p50_ms']:.0f} / {s['p99_ms']:.0f} | {n['p50_ms']:.0f} / {n['p99_ms']:.0f} |")
    off = results["score offline"]["texts_per_s"]
    best = max(results[f"serve c={c}"]["texts_per_s"] for c in CONCURRENCY)
    lines += [
        "",
        f"`rayreward score` offline (Ray Data, one actor, start-up included): {off:.1f} texts/s; serve at its best "
        f"concurrency reaches {best / off:.2f}x of it. Serve's batches in this run: {stats['batches']} batches for "
        f"{stats['texts']} texts, largest {stats['largest_batch']}.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        record_section("Reward serving (`rayreward serve`)", body)


if __name__ == "__main__":
    main()
