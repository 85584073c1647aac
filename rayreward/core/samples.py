"""Scoring a few pairs, groups or rated responses and showing them as a table (``visualize_samples``)."""

from __future__ import annotations

import math
import textwrap

import torch


def score_samples(trainer, dataset, num_samples: int = 4):
    """Rewards of the first ``num_samples`` pairs of ``dataset`` (-1: all) as a DataFrame."""
    import pandas as pd

    tok = trainer.processing_class
    rows = []
    for batch in _eval_batches(trainer, dataset):
        chosen, rejected = trainer.compute_rewards(trainer.model, batch)
        for i in range(chosen.shape[0]):
            c_ids = batch["input_ids_chosen"][i][batch["attention_mask_chosen"][i].bool()]
            r_ids = batch["input_ids_rejected"][i][batch["attention_mask_rejected"][i].bool()]
            diff = (chosen[i] - rejected[i]).item()
            rows.append(
                {
                    "chosen_text": tok.decode(c_ids, skip_special_tokens=True),
                    "rejected_text": tok.decode(r_ids, skip_special_tokens=True),
                    "reward_chosen": chosen[i].item(),
                    "reward_rejected": rejected[i].item(),
                    "p_chosen": 1.0 / (1.0 + math.exp(-diff)),
                }
            )
            if 0 <= num_samples <= len(rows):
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def _eval_batches(trainer, dataset):
    """The eval batches of ``dataset`` on the trainer's device, the model in eval mode and
    without gradients while they are read (its mode is restored afterwards)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in trainer.get_eval_dataloader(dataset):
                yield {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    finally:
        model.train(was_training)


def format_table(table, width: int = 48) -> str:
    """A plain-text table: wrapped texts side by side, rewards and P(chosen > rejected)."""
    header = f"{'chosen':<{width}} | {'rejected':<{width}} | {'r_chosen':>8} | {'r_rejected':>10} | {'P(chosen)':>9}"
    lines = [header, "-" * len(header)]
    for row in table.itertuples(index=False):
        left = textwrap.wrap(_tail(row.chosen_text, width * 3), width) or [""]
        right = textwrap.wrap(_tail(row.rejected_text, width * 3), width) or [""]
        for k in range(max(len(left), len(right))):
            a = left[k] if k < len(left) else ""
            b = right[k] if k < len(right) else ""
            nums = (
                f"{row.reward_chosen:>8.3f} | {row.reward_rejected:>10.3f} | {row.p_chosen:>9.3f}"
                if k == 0
                else f"{'':>8} | {'':>10} | {'':>9}"
            )
            lines.append(f"{a:<{width}} | {b:<{width}} | {nums}")
        lines.append("-" * len(header))
    return "\n".join(lines)


def _tail(text: str, n: int) -> str:
    # The answers differ at the end; show that part when a text is long.
    text = " ".join(text.split())
    return text if len(text) <= n else "..." + text[-(n - 3):]


def score_group_samples(trainer, dataset, num_samples: int = 4):
    """Rewards of the responses of the first ``num_samples`` groups (ranked data) or rated
    responses (ratings) of ``dataset`` (-1: all), one row per response, as a DataFrame.

    Groups: ``group``, ``text``, ``score`` (the data's), ``reward`` and ``reward_rank`` (1 =
    the model's best in its group). Ratings: ``text``, then per attribute the data's rating
    (NaN: not rated) and ``<attribute>_predicted`` in rating units, then the combined ``reward``.
    """
    import pandas as pd

    from rayreward.core.attributes import attribute_spec

    tok = trainer.processing_class
    spec = attribute_spec(trainer.model.config)
    names = list(spec.names) or ["reward"]
    rows: list[dict] = []
    offset = 0  # group numbers run on across batches
    for batch in _eval_batches(trainer, dataset):
        outputs = trainer.compute_outputs(trainer.model, batch)
        texts = [tok.decode(ids[mask.bool()], skip_special_tokens=True)
                 for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        if "ratings" in batch:
            # Rating units, combined as `score` and `serve` combine them.
            values = spec.values(outputs)
            rewards = spec.combine(values)
            for i, text in enumerate(texts):
                row = {"text": text}
                for a, name in enumerate(names):
                    row[name] = batch["ratings"][i, a].item()
                    row[f"{name}_predicted"] = values[i, a].item()
                row["reward"] = rewards[i].item()
                rows.append(row)
                if 0 <= num_samples <= len(rows):
                    return pd.DataFrame(rows)
            continue
        rewards, groups = trainer.combined_rewards(outputs), batch["group_index"]
        for g in torch.unique(groups).tolist():
            members = (groups == g).nonzero().flatten().tolist()
            order = sorted(members, key=lambda i: -rewards[i].item())
            for i in members:
                rows.append({"group": offset, "text": texts[i], "score": batch["scores"][i].item(),
                             "reward": rewards[i].item(), "reward_rank": order.index(i) + 1})
            offset += 1
            if 0 <= num_samples <= offset:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def format_group_table(table, width: int = 72) -> str:
    """A plain-text table of ``score_group_samples``: one block per group or rated response."""
    if "group" in table.columns:
        header = f"{'group':>5} | {'response':<{width}} | {'score':>7} | {'reward':>8} | {'rank':>4}"
        cells = [(f"{row.group:>5}", row.text, f"{row.score:>7.3f} | {row.reward:>8.3f} | {row.reward_rank:>4}")
                 for row in table.itertuples(index=False)]
        blank = f"{'':>7} | {'':>8} | {'':>4}"
        lead_blank = f"{'':>5}"
    else:
        names = [c for c in table.columns if c not in ("text", "reward") and not c.endswith("_predicted")]
        header = f"{'response':<{width}} | " + " | ".join(f"{n[:14]:>14}" for n in names) + f" | {'reward':>8}"
        cells = [(None, row["text"], " | ".join(f"{_rated(row[n]):>6} {row[n + '_predicted']:>7.3f}" for n in names)
                  + f" | {row['reward']:>8.3f}") for _, row in table.iterrows()]
        blank = " | ".join(f"{'':>14}" for _ in names) + f" | {'':>8}"
        lead_blank = None
    lines = [header, "-" * len(header)]
    for lead, text, nums in cells:
        wrapped = textwrap.wrap(_tail(text, width * 3), width) or [""]
        for k, part in enumerate(wrapped):
            prefix = "" if lead is None else (lead if k == 0 else lead_blank) + " | "
            lines.append(f"{prefix}{part:<{width}} | {nums if k == 0 else blank}")
        lines.append("-" * len(header))
    return "\n".join(lines)


def _rated(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"
