"""Scoring a few pairs and showing them as a table (``visualize_samples``)."""

from __future__ import annotations

import math
import textwrap

import torch


def score_samples(trainer, dataset, num_samples: int = 4):
    """Rewards of the first ``num_samples`` pairs of ``dataset`` (-1: all) as a DataFrame."""
    import pandas as pd

    tok = trainer.processing_class
    model = trainer.model
    was_training = model.training
    model.eval()
    rows = []
    loader = trainer.get_eval_dataloader(dataset)
    try:
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(trainer.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                chosen, rejected = trainer.compute_rewards(model, batch)
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
    finally:
        model.train(was_training)
    return pd.DataFrame(rows)


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
