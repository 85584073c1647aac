"""How good a reward model is, and its rewards for new data.

- ``scorer``: one ``RewardScorer`` that tokenizes and scores texts, conversations, pairs.
- ``score``: ``rayreward score`` over a data set on Ray Data; ``evaluate``: the metrics
  of ``rayreward evaluate``; ``report``: its markdown and figures.
- ``normalization``: reward mean/std stored with a model.
"""
