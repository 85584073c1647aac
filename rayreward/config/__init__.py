"""The ground floor: how a YAML file and dotted overrides become a typed, checked config.

- ``tree``: YAML 1.2 scalars, dotted overrides (``train.learning_rate=2e-5``), dataclass
  trees built from mappings with unknown keys named (and the closest valid key
  suggested), type checks, generated help, and ``ConfigError``: every problem of a
  config at once, saying which config and which file.

The job (``rayreward.job``), sweep (``tune:`` section) and serve (``rayreward.serve.config``)
configs are schemas built on it; it imports nothing else of rayreward.
"""
