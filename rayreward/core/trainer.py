"""``RewardTrainer``: a ``transformers.Trainer`` that trains a scalar reward head.

It takes both API generations: the seed's (``tokenizer=``, ``max_length=`` on the
trainer, ``RewardDataCollatorWithPadding``, ``input_ids_chosen``/... columns) and TRL
1.x's (``processing_class=`` optional, a model given by id, ``DataCollatorForPreference``,
``chosen_ids``/``rejected_ids`` columns, streaming data sets). Only public ``Trainer``
API is overridden: the two dataloaders, ``evaluate``/``predict`` (to prepare raw data),
``compute_loss``, ``prediction_step``, ``training_step`` and ``log``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Any, Callable, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import EvalPrediction

from rayreward.core.config import RewardConfig
from rayreward.core.attributes import record_attributes
from rayreward.core.group_data import GroupDataset, GroupStream, group_format_of, tokenize_groups
from rayreward.core.group_training import GroupTraining
from rayreward.core.loss import pairwise_loss
from rayreward.core.metrics import reward_metrics
from rayreward.core.loading import model_and_tokenizer, prepared_model_init
from rayreward.core.model import prepare_model, warn_if_pad_is_final_eos
from rayreward.core.packed import packed_rewards, plan_packing
from rayreward.core.pairs import PairDataset, prepare_hf_dataset, tokenize_pairs
from rayreward.data.collators import RewardDataCollatorWithPadding
from rayreward.data.feeding import BatchStream
from rayreward.data.formats import BadRowError, DataFormatError, LengthStats
from rayreward.data.group_collators import GroupCollator, is_group_batch, is_rating_batch
from rayreward.data.packing import is_packed, pair_length

logger = logging.getLogger(__name__)

# Tags on the model card, as TRL tags its own.
MODEL_TAGS = ["rayreward", "reward-trainer", "trl"]


class _LengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped sampler, with the mega-batch size set.

    transformers' own caps the mega-batch at 50 batches (fewer for small data sets);
    ``RewardConfig.length_group_batches`` sets it here, so the in-process trainer groups
    over the same window as the Ray workers' shuffle buffers.
    """

    def __init__(self, lengths: list[int], batch_size: int, mega_batch_mult: int):
        super().__init__(batch_size, lengths=lengths)
        self.mega_batch_mult = mega_batch_mult

    def __iter__(self):
        indices = get_length_grouped_indices(self.lengths, self.batch_size, self.mega_batch_mult, self.generator)
        return iter(indices)


def _is_hf_dataset(dataset) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency of the bench extra only
        return False
    return isinstance(dataset, (datasets.Dataset, datasets.IterableDataset))


class RewardTrainer(GroupTraining, Trainer):
    """Trains a sequence-classification model with one output as a reward model.

    Chosen and rejected sequences go through the model in one concatenated forward
    pass; the loss is ``-logsigmoid(r_chosen - r_rejected - margin)`` averaged over the
    batch, plus the optional centering term (see ``rayreward.core.loss.pairwise_loss``).
    Ranked groups, chosen/rejected lists and ratings (``rayreward.data.groups``) train
    with ``args.loss_type`` from one forward pass of each group's K responses; with
    ``args.attributes`` the head has one output per attribute (``num_labels``).

    Args:
        model: a model, or a hub id/folder loaded with
            ``AutoModelForSequenceClassification`` (``num_labels=1``, float32 weights
            unless ``args.model_init_kwargs`` sets ``dtype``, ``trust_remote_code`` from
            ``args``).
        args: a ``RewardConfig``; defaults to one with ``output_dir="<model>-Reward"``.
        data_collator: defaults to ``RewardDataCollatorWithPadding(tokenizer)``; TRL's
            ``DataCollatorForPreference`` works too.
        train_dataset: pairs as a ``datasets.Dataset``, a ``datasets.IterableDataset``
            (streaming; set ``max_steps``) or a list of dicts (text, conversational or
            pre-tokenized; optional ``margin``), or a torch ``IterableDataset`` of
            tokenized rows or ready batches (the distributed path). Required.
        eval_dataset: the same kinds, or a dict / ``DatasetDict`` of them.
        tokenizer: the model's tokenizer; ``processing_class`` is its TRL name. When
            neither is given it is loaded from the model's id.
        model_init, compute_metrics, callbacks, optimizers,
        preprocess_logits_for_metrics, optimizer_cls_and_kwargs: as for
            ``transformers.Trainer``. A ``compute_metrics`` of yours is merged with the
            reward metrics.
        max_length: overrides ``args.max_length``.
        quantization_config: as TRL's: a ``BitsAndBytesConfig`` for a model given by id
            (QLoRA with ``peft_config``).
        peft_config: a PEFT config (e.g. ``LoraConfig``); the model is wrapped for
            sequence classification with the score head trained and saved.

    Raises:
        ValueError: two different tokenizers, no tokenizer to be found, a model whose
            ``num_labels`` is not 1 (or the number of ``args.attributes``), data whose
            shape does not fit ``args.loss_type``, or settings that contradict each other.

    Example:
        >>> trainer = RewardTrainer(model="Qwen/Qwen2.5-0.5B", train_dataset=pairs)
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
        optimizer_cls_and_kwargs: tuple | None = None,
        quantization_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "name_or_path", "")
            args = RewardConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1] or 'rayreward'}-Reward")
        if not isinstance(args, RewardConfig):
            raise TypeError(
                f"args must be a rayreward.RewardConfig, got {type(args).__name__}; "
                "build one with RewardConfig(**your_training_arguments.to_dict())"
            )
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise ValueError("pass the tokenizer once, as tokenizer= or processing_class=, not two different ones")
        tokenizer = tokenizer if tokenizer is not None else processing_class
        if args.deepspeed:
            from rayreward.runtime.native_ops import use_environment_ninja

            use_environment_ninja()  # DeepSpeed builds its ops with the first ninja on PATH
        self.max_length = max_length if max_length is not None else args.max_length

        model, tokenizer, added_tokens = model_and_tokenizer(model, model_init, tokenizer, args, quantization_config)
        if model is not None:
            from rayreward.core.chat_template import train_added_tokens

            model = prepare_model(model, args, train_added_tokens(peft_config, model, added_tokens))
        elif peft_config is not None:
            raise ValueError("peft_config needs model=...; with model_init, wrap the model inside model_init")
        if model_init is not None:
            model_init = prepared_model_init(model_init, tokenizer, args)

        import weakref

        self._prepared = weakref.WeakSet()
        self.length_stats: dict[str, LengthStats] = {}
        if isinstance(train_dataset, torch.utils.data.IterableDataset) and not isinstance(train_dataset, BatchStream):
            # As TRL: Accelerate must not dispatch a stream's batches from one process.
            args.accelerator_config.dispatch_batches = False
        train_dataset = self._prepare_dataset(train_dataset, tokenizer, args, "train_dataset")
        if isinstance(eval_dataset, Mapping):
            eval_dataset = {k: self._prepare_dataset(v, tokenizer, args, f"eval_dataset[{k!r}]")
                            for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare_dataset(eval_dataset, tokenizer, args, "eval_dataset")
        if isinstance(train_dataset, PairDataset):
            warn_if_pad_is_final_eos(tokenizer, train_dataset.pairs)
        self.data_kind = self._data_kind(train_dataset, eval_dataset, args)
        self._attribute_stats = None
        if self.data_kind == "ratings" and args.standardize_targets:
            # A Ray shard cannot be read up front: the driver computed them (BatchStream.label_stats).
            stats = (train_dataset.label_statistics() if isinstance(train_dataset, GroupDataset)
                     else getattr(train_dataset, "label_stats", None))
            if stats is None and isinstance(train_dataset, GroupStream):
                raise ValueError("standardize_targets needs the mean and std of each attribute before training, and a "
                                 "streaming datasets.IterableDataset cannot be read ahead; pass a datasets.Dataset or a "
                                 "list of dicts, or train through `rayreward train` (which computes them from the files)")
            if stats is None:
                raise ValueError("standardize_targets needs the training ratings (train_dataset) to compute the "
                                 "mean and std of each attribute")
            self._attribute_stats = stats
        if args.attributes and model is not None:
            mean, std = self._attribute_stats or (None, None)
            record_attributes(model, args.attributes, args.combination_weights(), mean, std)

        self._user_compute_metrics = compute_metrics
        self._train_rewards: dict[str, list[float]] = defaultdict(list)
        # Length grouping and packing (rayreward.data.packing). The packing collator feeds
        # training only; evaluation keeps padded batches of whole pairs.
        # A stream of rayreward train carries the plan its worker resolved for this model.
        self.packing = getattr(train_dataset, "packing", None) or plan_packing(model, args)
        if self.data_kind == "pairs":
            self._train_collator = None if data_collator is not None else self.packing.collator(tokenizer.pad_token_id)
            default_collator = RewardDataCollatorWithPadding(tokenizer, args.pad_to_multiple_of)
        else:
            self._train_collator = None if data_collator is not None else self.packing.group_collator(
                tokenizer.pad_token_id, args.pad_to_multiple_of)
            default_collator = GroupCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"),
                                             args.pad_to_multiple_of)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or default_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            model_init=model_init,
            compute_metrics=self._compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(MODEL_TAGS)

    def _prepare_dataset(self, dataset, tokenizer, args: RewardConfig, name: str):
        """Raw pairs -> tokenized ones (see ``rayreward.core.pairs``); prepared data passes through."""
        if dataset is None or dataset in self._prepared:
            return dataset
        group_fmt = None if isinstance(dataset, (PairDataset, GroupDataset)) else group_format_of(dataset)
        if group_fmt is not None:
            out, stats = tokenize_groups(dataset, tokenizer, group_fmt, name, self.max_length, args.length_policy,
                                         args.attributes)
        elif _is_hf_dataset(dataset):
            out, stats = prepare_hf_dataset(dataset, tokenizer, name, self.max_length, args.length_policy,
                                            args.dataset_num_proc)
        elif isinstance(dataset, (PairDataset, GroupDataset, torch.utils.data.IterableDataset)):
            return dataset
        else:
            out, stats = tokenize_pairs(dataset, tokenizer, name, self.max_length, args.length_policy)
        self.length_stats[name] = stats
        if self.max_length is not None and (stats.filtered or stats.truncated):
            logger.warning("%s: %s", name, stats.describe(self.max_length, args.length_policy))
        self._prepared.add(out)
        return out

    def _prepare_eval(self, eval_dataset, name: str):
        if eval_dataset is None or isinstance(eval_dataset, str):
            return eval_dataset
        if isinstance(eval_dataset, Mapping):
            return {k: self._prepare_dataset(v, self.processing_class, self.args, f"{name}[{k!r}]")
                    for k, v in eval_dataset.items()}
        return self._prepare_dataset(eval_dataset, self.processing_class, self.args, name)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """``Trainer.evaluate``, also on raw pairs (any kind ``__init__`` takes, or a dict of them)."""
        eval_dataset = self._prepare_eval(eval_dataset, "eval_dataset")
        return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """``Trainer.predict`` on raw or tokenized pairs; predictions are ``[r_chosen, r_rejected]`` per pair."""
        test_dataset = self._prepare_eval(test_dataset, "test_dataset")
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # -- feeding ------------------------------------------------------------------------

    def get_train_sampler(self, dataset=None) -> torch.utils.data.Sampler | None:
        """The order of training pairs: length-grouped where ``group_by_length`` resolves on, else random.

        None for a stream (it keeps its own order).
        """
        dataset = dataset if dataset is not None else self.train_dataset
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return None
        if not self.packing.group_by_length:
            return torch.utils.data.RandomSampler(dataset)
        if isinstance(dataset, GroupDataset):
            lengths = dataset.lengths()
        elif isinstance(dataset, PairDataset):
            lengths = [pair_length(p) for p in dataset.pairs]
        else:
            lengths = [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
        return _LengthGroupedSampler(lengths, self.args.train_batch_size, self.args.length_group_batches)

    def _loader(self, dataset, batch_size: int, collate_fn, sampler) -> torch.utils.data.DataLoader:
        a = self.args
        options: dict[str, Any] = {"batch_size": batch_size, "collate_fn": collate_fn, "pin_memory": a.dataloader_pin_memory}
        if not isinstance(dataset, torch.utils.data.IterableDataset):
            options.update(sampler=sampler, drop_last=a.dataloader_drop_last)
        if a.dataloader_num_workers > 0:
            options.update(num_workers=a.dataloader_num_workers, persistent_workers=a.dataloader_persistent_workers,
                           prefetch_factor=a.dataloader_prefetch_factor)
        return self.accelerator.prepare(torch.utils.data.DataLoader(dataset, **options))

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError(
                "train() needs training pairs: pass train_dataset= to RewardTrainer (a datasets.Dataset, a "
                "datasets.IterableDataset or a list of dicts); this trainer was built for evaluation only"
            )
        if isinstance(dataset, BatchStream):
            return dataset.loader()
        # The packing collator is for pairs this trainer tokenized; a collator of the
        # user's, or rows of a foreign stream, get the padded collator.
        collate = self._train_collator if self._train_collator is not None else self.data_collator
        return self._loader(dataset, self.args.train_batch_size, collate, self.get_train_sampler(dataset))

    def get_eval_dataloader(self, eval_dataset=None) -> torch.utils.data.DataLoader:
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("evaluation needs an eval_dataset")
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        else:
            dataset = self._prepare_eval(eval_dataset if eval_dataset is not None else self.eval_dataset, "eval_dataset")
        if isinstance(dataset, BatchStream):
            return dataset.loader()
        sampler = None if isinstance(dataset, torch.utils.data.IterableDataset) else torch.utils.data.SequentialSampler(dataset)
        return self._loader(dataset, self.args.eval_batch_size, self.data_collator, sampler)

    def get_test_dataloader(self, test_dataset) -> torch.utils.data.DataLoader:
        return self.get_eval_dataloader(self._prepare_eval(test_dataset, "test_dataset"))

    def training_step(self, *args, **kwargs):
        # activation_offloading: tensors saved for backward wait in (pinned) CPU memory.
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
                   if self.args.activation_offloading else contextlib.nullcontext())
        with offload:
            return super().training_step(*args, **kwargs)

    # -- loss and metrics -------------------------------------------------------------

    def compute_rewards(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of the chosen and rejected sides of a collated batch (one forward pass)."""
        if is_packed(inputs):
            return packed_rewards(model, inputs, getattr(self.args, "attention_backend", "auto"))
        if "input_ids_chosen" not in inputs:
            # TRL 1.x's DataCollatorForPreference: one batch, the chosen rows first.
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            chosen, rejected = logits[:, 0].float().chunk(2)
            return chosen, rejected
        n = inputs["input_ids_chosen"].shape[0]
        input_ids = torch.cat([inputs["input_ids_chosen"], inputs["input_ids_rejected"]], dim=0)
        attention_mask = torch.cat([inputs["attention_mask_chosen"], inputs["attention_mask_rejected"]], dim=0)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        rewards = logits[:, 0].float()
        return rewards[:n], rewards[n:]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if is_group_batch(inputs) or is_rating_batch(inputs):
            return self._group_loss(model, inputs, return_outputs)
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
        # The prepared eval dataloader already puts batches on the device; a batch handed
        # in directly (tests, user code) may still be on the CPU.
        device = self.args.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        if "rewards" in out:
            return loss, *self._group_predictions(out)
        if "outputs" in out:
            return loss, out["outputs"].detach(), out["labels"].to(out["outputs"].device)
        logits = torch.stack([out["rewards_chosen"], out["rewards_rejected"]], dim=1).detach()
        labels = torch.zeros(logits.shape[0], device=logits.device)
        return loss, logits, labels

    def _compute_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        if self.data_kind != "pairs":
            metrics = self._group_metrics(logits, prediction.label_ids)
        else:
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
        """Prints eval pairs with their rewards and the preference probability (groups and
        ratings: each response with its reward, beside the data's score or ratings).

        Args:
            num_print_samples: how many pairs (groups, rated responses) to show; -1 shows all.
            dataset: the data to score; defaults to the eval data set.

        Returns:
            A ``pandas.DataFrame``. Pairs: ``chosen_text``, ``rejected_text``,
            ``reward_chosen``, ``reward_rejected``, ``p_chosen`` (sigmoid of the reward
            difference). Groups and ratings: one row per response
            (``rayreward.core.samples.score_group_samples``).
        """
        from rayreward.core.samples import format_group_table, format_table, score_group_samples, score_samples

        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("visualize_samples needs eval data: pass eval_dataset to the trainer or dataset=...")
        if isinstance(dataset, Mapping):
            dataset = next(iter(dataset.values()))
        dataset = self._prepare_eval(dataset, "dataset")
        if self.data_kind == "pairs":
            table = score_samples(self, dataset, num_print_samples)
            print(format_table(table))
        else:
            table = score_group_samples(self, dataset, num_print_samples)
            print(format_group_table(table))
        return table


__all__ = ["RewardTrainer", "PairDataset", "tokenize_pairs", "BadRowError", "DataFormatError", "MODEL_TAGS"]
