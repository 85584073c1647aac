"""The job config: one typed tree (YAML + dotted overrides), validated before Ray starts.

- ``tree``: the generic machinery (YAML loading, overrides, typed building, unknown keys).
- ``sections``: the ``model``, ``lora``, ``deepspeed``, ``scaling``, ``storage``,
  ``failure`` sections; ``tune_section``: the ``tune`` section.
- ``config``: ``JobConfig`` (all sections), validation and the derived step counts.
- ``deepspeed``: the DeepSpeed config a job trains with.
- ``train_section``: the ``train`` section, typed from ``RewardConfig``'s fields.
- ``preflight``: data, model and storage checked before Ray starts.
"""
