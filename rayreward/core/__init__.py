"""The trainer core: ``RewardConfig``, ``RewardTrainer``, the loss, the metrics, the model.

Everything here works in one process, with no Ray: the distributed run (``rayreward.run``)
builds the same trainer inside each Ray worker. Modules:

- ``config``: ``RewardConfig``, TRL's ``RewardConfig`` fields on ``TrainingArguments``.
- ``trainer``: ``RewardTrainer``, a ``transformers.Trainer`` for preference pairs.
- ``loss``: the pairwise (Bradley-Terry) loss; ``metrics``: accuracy, calibration.
- ``model``: loading a reward model, its head, dropout, PEFT; ``tiny``: built-in models.
- ``packed``: the packed forward pass and which models may pack.
- ``checkpoint``: a training checkpoint to a plain Hugging Face model folder.
- ``samples``: ``visualize_samples``' table.
"""
