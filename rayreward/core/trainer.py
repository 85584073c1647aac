"""``RewardTrainer``: a ``transformers.Trainer`` that trains a scalar reward head."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import EvalPrediction

from rayreward.data.collators import RewardDataCollatorWithPadding
from rayreward.core.config import RewardConfig
from rayreward.data.formats import (
    BadRowError,
    ColumnNames,
    DataFormatError,
    LengthStats,
    PairEncoder,
    detect_format,
    row_problem,
)
from rayreward.core.loss import pairwise_loss
from rayreward.core.metrics import reward_metrics
from rayreward.core.model import ensure_pad_token, load_reward_model, prepare_model, warn_if_pad_is_final_eos
from rayreward.data.packing import LengthGroupedPairSampler, is_packed, pair_length
from rayreward.core.packed import packed_rewards, plan_packing

logger = logging.getLogger(__name__)

_ENCODE_CHUNK = 1024


class PairDataset(torch.utils.data.Dataset):
    """Tokenized pairs held in memory, one dict per pair."""

    def __init__(self, pairs: list[dict[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[i]


def tokenize_pairs(
    dataset,
    tokenizer,
    name: str = "dataset",
    max_length: int | None = None,
    length_policy: str = "filter",
    names: ColumnNames = ColumnNames(),
    fmt: str | None = None,
) -> tuple[PairDataset, LengthStats]:
    """Checks and tokenizes a whole data set in this process.

    Args:
        dataset: a ``datasets.Dataset`` or a list of dicts, in any format of
            ``rayreward.data.formats``.
        tokenizer: the tokenizer of the model.
        name: how errors name the data set.
        max_length: see ``RewardConfig.max_length``.
        length_policy: see ``RewardConfig.length_policy``.
        names: column names.
        fmt: the format; detected when None.

    Returns:
        The tokenized pairs and the counts of the length policy.

    Raises:
        DataFormatError: the data set lacks the columns of every format, or all pairs
            were filtered.
        BadRowError: a row is malformed; the message names the row and the field.
    """
    columns = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    if len(dataset) == 0:
        raise DataFormatError(f"{name} is empty; it needs at least one preference pair")
    first = dataset[0]
    fmt = fmt or detect_format(columns, first, names, source=name)
    def relevant(cols):
        if fmt == "pretokenized":
            return [c for c in cols if c.startswith(("input_ids_", "attention_mask_")) or c == names.margin]
        return [c for c in cols if c in (names.chosen, names.rejected, names.prompt, names.margin)]

    required = relevant(columns)
    encoder = PairEncoder(tokenizer, fmt, names, max_length, length_policy)
    pairs: list[dict[str, Any]] = []
    chunk: list[Mapping[str, Any]] = []
    for i, row in enumerate(dataset):
        for col in required:
            if col not in row:
                raise BadRowError(name, i, col, f"missing; the first row has '{col}', so every row needs it")
        # A column only some rows have (a margin on a few pairs) would give batches of
        # different shapes; the first row sets the columns for all.
        for col in relevant(row):
            if col not in required:
                raise BadRowError(
                    name, i, col, f"present, but the first row has no '{col}'; give it to every row or to none"
                )
        problem = row_problem(row, fmt, names)
        if problem:
            raise BadRowError(name, i, *problem)
        chunk.append(row)
        if len(chunk) == _ENCODE_CHUNK:
            pairs += [p for p in encoder.encode_rows(chunk) if p is not None]
            chunk = []
    if chunk:
        pairs += [p for p in encoder.encode_rows(chunk) if p is not None]
    stats = encoder.stats
    if max_length is not None:
        logger.info("%s: %s", name, stats.describe(max_length, length_policy))
    if not pairs:
        raise DataFormatError(
            f"{name}: all {stats.pairs} pairs are longer than max_length={max_length} tokens "
            f"(the longest has {stats.longest}); raise max_length or use length_policy='truncate'"
        )
    return PairDataset(pairs), stats


def _prepared_model_init(model_init: Callable, tokenizer, args: RewardConfig) -> Callable:
    """Wraps ``model_init`` so that every model it builds (one per Tune trial) gets the
    same set-up as ``model=``: pad token on the config, dropout off, cache off."""
    import inspect

    takes_trial = len(inspect.signature(model_init).parameters) == 1

    def init(trial=None):
        model = model_init(trial) if takes_trial else model_init()
        ensure_pad_token(tokenizer, model)
        return prepare_model(model, args)

    return init


class RewardTrainer(Trainer):
    """Trains a sequence-classification model with one output as a reward model.

    Chosen and rejected sequences go through the model in one concatenated forward
    pass; the loss is ``-logsigmoid(r_chosen - r_rejected - margin)`` averaged over the
    batch, plus the optional centering term (see ``rayreward.core.loss.pairwise_loss``).

    Args:
        model: a model, or a name/path loaded with ``AutoModelForSequenceClassification``
            (``num_labels=1``).
        args: a ``RewardConfig``.
        data_collator: defaults to ``RewardDataCollatorWithPadding(tokenizer)``.
        train_dataset: pairs as a ``datasets.Dataset`` or a list of dicts (text,
            conversational or pre-tokenized; optional ``margin``), or a torch
            ``IterableDataset`` of ready batches (the distributed path).
        eval_dataset: the same kinds, or a dict of them.
        tokenizer: the model's tokenizer; ``processing_class`` is accepted as a synonym.
        model_init, compute_metrics, callbacks, optimizers,
        preprocess_logits_for_metrics: as for ``transformers.Trainer``. A
            ``compute_metrics`` of yours is merged with the reward metrics.
        max_length: overrides ``args.max_length``.
        peft_config: a PEFT config (e.g. ``LoraConfig``); the model is wrapped for
            sequence classification with the score head trained and saved.

    Example:
        >>> trainer = RewardTrainer(model=model, args=RewardConfig(output_dir="out"),
        ...                         tokenizer=tokenizer, train_dataset=pairs)
        >>> trainer.train()
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        args: RewardConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset=None,
        eval_dataset=None,
        tokenizer=None,
        model_init: Callable[[], PreTrainedModel] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        max_length: int | None = None,
        peft_config=None,
        processing_class=None,
    ):
        args = args if args is not None else RewardConfig(output_dir="rayreward-output")
        if not isinstance(args, RewardConfig):
            raise TypeError(
                f"args must be a rayreward.RewardConfig, got {type(args).__name__}; "
                "build one with RewardConfig(**your_training_arguments.to_dict())"
            )
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise ValueError("pass the tokenizer once, as tokenizer= or processing_class=, not two different ones")
        tokenizer = tokenizer if tokenizer is not None else processing_class
        if tokenizer is None:
            raise ValueError("RewardTrainer needs the model's tokenizer: pass tokenizer=... (or processing_class=...)")
        self.max_length = max_length if max_length is not None else args.max_length

        if isinstance(model, str):
            model = load_reward_model(model)
        if model is None and model_init is None:
            raise ValueError("pass a model (or a model name/path) or a model_init")
        ensure_pad_token(tokenizer, model)
        if model is not None:
            model = prepare_model(model, args, peft_config)
        elif peft_config is not None:
            raise ValueError("peft_config needs model=...; with model_init, wrap the model inside model_init")
        if model_init is not None:
            model_init = _prepared_model_init(model_init, tokenizer, args)

        self.length_stats: dict[str, LengthStats] = {}
        train_dataset = self._tokenize(train_dataset, tokenizer, args, "train_dataset")
        if isinstance(eval_dataset, Mapping):
            eval_dataset = {k: self._tokenize(v, tokenizer, args, f"eval_dataset[{k!r}]") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._tokenize(eval_dataset, tokenizer, args, "eval_dataset")
        if isinstance(train_dataset, PairDataset):
            warn_if_pad_is_final_eos(tokenizer, train_dataset.pairs)

        self._user_compute_metrics = compute_metrics
        self._train_rewards: dict[str, list[float]] = defaultdict(list)
        # Length grouping and packing (rayreward.data.packing). The packing collator feeds
        # training only; evaluation keeps padded batches of whole pairs.
        self.packing = plan_packing(model, args)
        self._train_collator = None if data_collator is not None else self.packing.collator(tokenizer.pad_token_id)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or RewardDataCollatorWithPadding(tokenizer),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            model_init=model_init,
            compute_metrics=self._compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )

    def _tokenize(self, dataset, tokenizer, args: RewardConfig, name: str):
        if dataset is None or isinstance(dataset, (torch.utils.data.IterableDataset, PairDataset)):
            return dataset
        pairs, stats = tokenize_pairs(dataset, tokenizer, name, self.max_length, args.length_policy)
        self.length_stats[name] = stats
        if self.max_length is not None and (stats.filtered or stats.truncated):
            logger.warning("%s: %s", name, stats.describe(self.max_length, args.length_policy))
        return pairs

    def get_train_dataloader(self):
        # Only pairs held in memory are collated here; a stream brings its own batches.
        if self._train_collator is None or not isinstance(self.train_dataset, PairDataset):
            return super().get_train_dataloader()
        padded, self.data_collator = self.data_collator, self._train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = padded

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not (self.packing.group_by_length and isinstance(dataset, PairDataset)):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedPairSampler(
            [pair_length(p) for p in dataset.pairs], self._train_batch_size, self.args.length_group_batches,
            seed=self.args.seed,
        )

    # -- loss and metrics -------------------------------------------------------------

    def compute_rewards(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of the chosen and rejected sides of a collated batch (one forward pass)."""
        if is_packed(inputs):
            return packed_rewards(model, inputs, getattr(self.args, "attention_backend", "auto"))
        n = inputs["input_ids_chosen"].shape[0]
        input_ids = torch.cat([inputs["input_ids_chosen"], inputs["input_ids_rejected"]], dim=0)
        attention_mask = torch.cat([inputs["attention_mask_chosen"], inputs["attention_mask_rejected"]], dim=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        rewards = logits[:, 0].float()
        return rewards[:n], rewards[n:]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self.compute_rewards(model, inputs)
        margin = inputs.get("margin") if self.args.use_margin else None
        loss = pairwise_loss(chosen, rejected, margin, self.args.center_rewards_coefficient)
        if model.training:
            with torch.no_grad():
                for key, value in reward_metrics(chosen.detach(), rejected.detach()).items():
                    self._train_rewards[key].append(value)
        if return_outputs:
            return loss, {"rewards_chosen": chosen, "rewards_rejected": rejected}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1).detach()
        labels = torch.zeros(logits.shape[0], device=logits.device)
        return loss, logits, labels

    def _compute_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        metrics = reward_metrics(logits[:, 0], logits[:, 1])
        if self._user_compute_metrics is not None:
            metrics.update(self._user_compute_metrics(prediction))
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry the reward metrics averaged since the previous log.
        if "loss" in logs and self._train_rewards:
            for key, values in self._train_rewards.items():
                logs[key] = sum(values) / len(values)
            self._train_rewards.clear()
        super().log(logs, start_time)

    # -- looking at samples -----------------------------------------------------------

    def visualize_samples(self, num_print_samples: int = 4, dataset=None):
        """Prints eval pairs with their rewards and the preference probability.

        Args:
            num_print_samples: how many pairs to show; -1 shows all.
            dataset: the pairs to score; defaults to the eval data set.

        Returns:
            A ``pandas.DataFrame`` with columns ``chosen_text``, ``rejected_text``,
            ``reward_chosen``, ``reward_rejected``, ``p_chosen`` (sigmoid of the reward
            difference).
        """
        from rayreward.core.samples import format_table, score_samples

        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("visualize_samples needs eval data: pass eval_dataset to the trainer or dataset=...")
        if isinstance(dataset, Mapping):
            dataset = next(iter(dataset.values()))
        if not isinstance(dataset, (PairDataset, torch.utils.data.IterableDataset)):
            dataset, _ = tokenize_pairs(dataset, self.processing_class, "dataset", self.max_length, self.args.length_policy)
        table = score_samples(self, dataset, num_print_samples)
        print(format_table(table))
        return table


__all__ = ["RewardTrainer", "PairDataset", "tokenize_pairs", "BadRowError", "DataFormatError"]
