"""A training run on Ray: ``fit`` starts a ``TorchTrainer`` whose workers train.

- ``fit``: the driver side (data, trainer, storage, export, summary) and the worker loop.
- ``spec``: the run spec built once on the driver and handed to every worker (arguments,
  model, LoRA, tokenizer, DeepSpeed, steps, feeding, checkpoint manifest).
- ``callbacks``: the rank-0 progress lines and checkpoint reports of each worker.
- ``final_eval``: the export and end-of-run headline, off the driver on a cluster.
- ``eval_scores``: a model's rewards on the run's tokenized eval data (pairs, ranked groups
  or ratings) and the metrics of that shape, for the run's end and checkpoint evaluation.
- ``resume``: which checkpoint a re-run continues from (the Ctrl-C hint).
- ``loopback``: torch.distributed's rendezvous kept on 127.0.0.1.
- ``suite_eval``: a benchmark suite's score at each checkpoint, for sweeps ranked by it.
"""
