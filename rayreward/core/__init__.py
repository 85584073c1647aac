"""The trainer core: ``RewardConfig``, ``RewardTrainer``, the loss, the metrics, the model.

Everything here works in one process, with no Ray: the distributed run (``rayreward.run``)
builds the same trainer inside each Ray worker. Modules:

- ``config``: ``RewardConfig``, TRL's ``RewardConfig`` fields on ``TrainingArguments``.
- ``trainer``: ``RewardTrainer``, a ``transformers.Trainer`` for preference pairs.
- ``loss``: the pairwise (Bradley-Terry) loss; ``metrics``: accuracy, calibration.
- ``model``: loading a reward model (``BaseModelSpec``), its head, dropout, PEFT
  (``LoraSpec``); ``tiny``: built-in models.
- ``loading``: what a TRL-style call loads (the model by id, its tokenizer, token settings);
  ``chat_template``: TRL's ``chat_template_path`` cloning of another tokenizer's template.
- ``pairs``: the trainer's data sets (encoding, legacy columns, streams).
- ``packed``: the packed forward pass and which models may pack; ``attention``: the
  attention backends of packed batches.
- ``checkpoint``: a training checkpoint to a plain Hugging Face model folder, and the
  manifest a run writes into each checkpoint so that it exports alone.
- ``universal``: resuming ZeRO state at another world size (DeepSpeed's universal checkpoint).
- ``samples``: ``visualize_samples``' table.
- ``group_training``: what ``RewardTrainer`` does with ranked groups and ratings;
  ``group_data``: their in-process data sets; ``group_metrics``: ranking and rating
  metrics (pure); ``attributes``: several reward attributes in one model and how the
  exported config combines them.
"""
