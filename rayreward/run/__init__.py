"""A training run on Ray: ``fit`` starts a ``TorchTrainer`` whose workers train.

- ``fit``: the driver side (data, trainer, storage, export, summary).
- ``callbacks``: the rank-0 progress lines and checkpoint reports of each worker.
- ``final_eval``: the end-of-run headline from the exported model.
"""
