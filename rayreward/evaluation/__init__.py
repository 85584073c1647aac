"""How good a reward model is, and its rewards for new data.

- ``scorer``: one ``RewardScorer`` that tokenizes and scores texts, conversations, pairs.
- ``score``: ``rayreward score`` over a data set on Ray Data; ``evaluate``: the metrics
  of ``rayreward evaluate``; ``report``: its markdown and figures.
- ``normalization``: reward mean/std stored with a model.
- ``model_ref``: what ``--model`` names (folder, hub id, object-store URI, adapter) resolved.
- ``ensemble``: several models served or scored as one.
- ``suites``: RewardBench, RewardBench 2 and RM-Bench, scored by their official rules.
- ``evaluate_groups``: ``rayreward evaluate`` on ranked groups and on ratings.
"""
