"""A benchmark suite's score at every checkpoint of a run (``tune.metric: rewardbench2/overall``).

``SuiteMetrics`` is a Trainer callback that every worker runs. At a step where the
Trainer is about to save, it scores a fixed slice of the suite's data with the model
being trained (``rayreward.evaluation.suites.runner.score_in_memory``: the suite's
official rules over ``RewardScorer``'s tokenization and forward passes) and adds the
scores to the log history, so the checkpoint's report to Ray, and through it to Tune,
carries them. Every rank scores the same texts (ZeRO-3 gathers parameters in forward
passes that all ranks make); rank 0's numbers are the ones reported.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from transformers import TrainerCallback


class SuiteMetrics(TrainerCallback):
    """Adds ``<suite>/overall`` and ``<suite>/<section>`` to each checkpoint's metrics.

    Args:
        loaded: the suites' rows to score (``SuiteData``; a held-out slice).
        max_length: texts longer than this keep their last tokens; None: the model's limit.
    """

    def __init__(self, loaded: Sequence[Any], max_length: int | None = None):
        self.loaded, self.max_length = list(loaded), max_length

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # DefaultFlowCallback, first in the list, has already decided whether this step saves.
        if not control.should_save or model is None:
            return
        from rayreward.evaluation.scorer import DEFAULT_BATCH_TOKENS
        from rayreward.evaluation.suites.runner import metrics_of, score_in_memory

        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        started = time.monotonic()
        was_training = model.training
        model.eval()
        try:
            results = score_in_memory(model, tokenizer, self.loaded, DEFAULT_BATCH_TOKENS, self.max_length)
        finally:
            model.train(was_training)
        entry: dict[str, Any] = {"step": state.global_step}
        for data, scores in zip(self.loaded, results):
            entry.update(metrics_of(data.name, scores))
        entry["suite_seconds"] = round(time.monotonic() - started, 3)
        state.log_history.append(entry)
