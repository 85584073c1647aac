"""Hyperparameter sweeps with Ray Tune: each trial is a ``rayreward train`` run.

- ``sweep``: the search space, the trials and the Tuner; ``report``: the results table,
  the best config and the plot.
"""
