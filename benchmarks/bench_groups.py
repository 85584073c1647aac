"""A ranked group of K = 4 responses: packed (prompt once) vs K separate rows vs the expanded pairs.

    python benchmarks/bench_groups.py                 # records "Ranked groups: K = 4 (issue 25)"
    python benchmarks/bench_groups.py --groups 16 --repeats 1 --no-record

Real text: hh-rlhf harmless train rows. A group is one row's prompt (the dialogue up to
its last "Assistant:") with four responses: the row's chosen (score 3) and rejected
(score 2) answers and the final answers of the two next rows (score 1 and 0), all
tokenized as ``prompt + response`` with rayreward's encoder. The model is bench_trl.py's
random-init Llama (4 layers, hidden 256, sdpa) with the bundled tokenizer; one training
step (forward, Bradley-Terry loss, backward) per batch of groups, in one process, the
three layouts alternating batch by batch so that the machine's load hits them alike:

- packed groups: each group's shared prompt once, its four responses after it (block
  mask, restarted positions), groups packed padding-free (``pack_groups``);
- K separate rows: the four ``prompt + response`` sequences as rows of a padded batch
  (``GroupCollator``); the same group loss from one forward pass;
- expanded pairs: the K(K-1)/2 = 6 pairs of the group as rayreward trains pairs
  (shared-prefix, padding-free packing, ``pack_pairs``), the pair loss.

Reported: positions computed per group (rows x row length, padding included), real tokens
per group, and the median seconds per group over the batches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _measure import hh_data_dir, machine, publish  # noqa: E402

SECTION = "Ranked groups: K = 4 (issue 25)"
MARK = "\n\nAssistant:"


def split(text: str) -> tuple[str, str]:
    cut = text.rfind(MARK) + len(MARK)
    return text[:cut], text[cut:]


def load_groups(n: int) -> list[dict]:
    rows = [json.loads(line) for _, line in zip(range(8 * n + 8), open(hh_data_dir() / "train.jsonl", encoding="utf-8"))]
    groups = []
    for i in range(len(rows) - 2):
        prompt, chosen = split(rows[i]["chosen"])
        p2, rejected = split(rows[i]["rejected"])
        others = [split(rows[i + 1]["chosen"])[1], split(rows[i + 2]["rejected"])[1]]
        answers = [chosen, rejected, *others]
        if p2 != prompt or len(prompt) < 20 or any(not a.strip() for a in answers) or len(set(answers)) < 4:
            continue
        groups.append({"prompt": prompt, "responses": answers, "scores": [3.0, 2.0, 1.0, 0.0]})
        if len(groups) == n:
            break
    return groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=64, help="groups of K = 4 (hh-rlhf train rows)")
    p.add_argument("--batch", type=int, default=8, help="groups per training step")
    p.add_argument("--repeats", type=int, default=2, help="passes over the groups")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)

    import torch

    from rayreward.core import tiny
    from rayreward.core.group_data import tokenize_groups
    from rayreward.core.loss import group_bradley_terry_loss, pairwise_loss
    from rayreward.core.packed import packed_group_rewards, packed_rewards
    from rayreward.data.group_collators import GroupCollator
    from rayreward.data.group_packing import pack_groups
    from rayreward.data.packing import pack_pairs
    from rayreward.data.tokenizer import builtin_tokenizer

    torch.set_num_threads(args.threads)
    tok = builtin_tokenizer()
    encoded, stats = tokenize_groups(load_groups(args.groups), tok, "ranked", "hh-rlhf groups", args.max_length)
    groups = encoded.examples
    model = tiny.build_model("tiny-llama", tok, hidden_size=256, num_layers=4, seed=0)
    model.config.use_cache = False
    pad = tok.pad_token_id

    def packed(batch):
        b = pack_groups(batch, pad)
        r = packed_group_rewards(model, b, "dense")[:, 0]
        return group_bradley_terry_loss(r, b["scores"], b["group_index"]), b["packed_input_ids"].numel(), int(
            (b["packed_sequence_ids"] >= 0).sum())

    def separate(batch):
        b = GroupCollator(pad)(batch)
        r = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
        return group_bradley_terry_loss(r, b["scores"], b["group_index"]), b["input_ids"].numel(), int(
            b["attention_mask"].sum())

    def pairs(batch):
        expanded = []
        for g in batch:
            seqs, scores = g["input_ids_responses"], g["scores"]
            for i, j in itertools.combinations(range(len(seqs)), 2):
                hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
                expanded.append({"input_ids_chosen": seqs[hi], "input_ids_rejected": seqs[lo]})
        b = pack_pairs(expanded, pad)
        c, r = packed_rewards(model, b, "dense")
        return pairwise_loss(c, r), b["packed_input_ids"].numel(), int((b["packed_sequence_ids"] >= 0).sum())

    methods = {"packed groups (prompt once)": packed, "K separate rows (padded)": separate,
               "expanded pairs (6 per group, shared-prefix packed)": pairs}
    batches = [groups[k:k + args.batch] for k in range(0, len(groups), args.batch)]
    seconds = {m: [] for m in methods}
    positions = {m: 0 for m in methods}
    real = {m: 0 for m in methods}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        for batch in batches:
            for name, step in methods.items():
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                loss, pos, tokens = step(batch)
                loss.backward()
                seconds[name].append((time.perf_counter() - start) / len(batch))
                if rep == 0:
                    positions[name] += pos
                    real[name] += tokens
    load_after = os.getloadavg()
    n = len(groups)
    info = machine()
    base = statistics.median(seconds["packed groups (prompt once)"])
    lines = [
        f"Machine: {info['cpu']}, {info['nproc']} cores, {info['date']}, torch {info['versions']['torch']}, "
        f"{args.threads} torch thread(s); load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/"
        f"{load_before[2]:.1f} before, {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} after "
        "(the machine is shared: times are noisy, the token counts are exact).",
        f"Command: `python benchmarks/bench_groups.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({n} groups of K = 4 from hh-rlhf harmless train ({stats.filtered} longer than {args.max_length} tokens "
        f"left out), {args.batch} groups a step, {args.repeats} passes, the layouts alternating step by step; "
        "random-init Llama, 4 layers, hidden 256; one step = forward + loss + backward).",
        "",
        "| layout | positions computed / group | real tokens / group | s / group (median) | vs packed groups |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in methods:
        med = statistics.median(seconds[name])
        lines.append(f"| {name} | {positions[name] / n:.0f} | {real[name] / n:.0f} | {med:.4f} | {med / base:.2f}x |")
    return publish(SECTION, lines, record=not args.no_record)


if __name__ == "__main__":
    sys.exit(main())
