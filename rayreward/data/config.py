"""``DataConfig``: the ``data:`` section of a job config.

Every default of the data pipeline lives here, and every field's ``help`` is what
``--help`` prints. ``validate`` reports all problems at once, as strings the config tree
collects with the other sections'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from rayreward.data.formats import FORMATS, LENGTH_POLICIES, ColumnNames

# The pair formats, then the shapes of rayreward.data.groups (repeated here: that module
# imports the tokenizer-facing encoders).
FORMAT_CHOICES = ("auto",) + FORMATS + ("ranked", "ranked_lists", "ratings")
BAD_ROW_POLICIES = ("error", "skip")
SHUFFLE_MODES = ("local", "global", "none")
IDENTICAL_PAIR_POLICIES = ("warn", "error")
# The length limit and policy of a pair, shared by this section and core.RewardConfig (one default each).
DEFAULT_MAX_LENGTH = 1024
DEFAULT_LENGTH_POLICY = "filter"


@dataclass
class ColumnsConfig:
    """Names of the columns that hold each part of a pair."""

    prompt: str = field(default="prompt", metadata={"help": "Column with the prompt (explicit-prompt and conversational data)."})
    chosen: str = field(default="chosen", metadata={"help": "Column with the preferred answer."})
    rejected: str = field(default="rejected", metadata={"help": "Column with the dispreferred answer."})
    margin: str = field(
        default="margin",
        metadata={"help": "Optional numeric column: how much chosen beats rejected; subtracted inside the loss."},
    )

    def names(self) -> ColumnNames:
        return ColumnNames(prompt=self.prompt, chosen=self.chosen, rejected=self.rejected, margin=self.margin)


@dataclass
class DataConfig:
    """Where the preference pairs come from and how they are tokenized and fed.

    Example:
        >>> cfg = DataConfig(train="data/train.jsonl", eval_split=0.05, max_length=512)
        >>> cfg.validate()
        []
    """

    train: str = field(
        default="",
        metadata={
            "help": "Training pairs: a file, folder or glob of .jsonl/.json/.parquet/.csv/.arrow files "
            "(optionally .gz), a datasets.save_to_disk folder, or an object-store URI (s3://, gs://)."
        },
    )
    eval: str | None = field(
        default=None,
        metadata={"help": "Evaluation pairs, in any form 'train' takes; null uses eval_split of the training data."},
    )
    eval_split: float = field(
        default=0.0,
        metadata={
            "help": "When 'eval' is null: the fraction of training pairs held out for evaluation, chosen by a "
            "hash of (file, row, seed), so the same on every run; 0 means no evaluation data."
        },
    )
    format: str = field(
        default="auto",
        metadata={"help": f"Data format: one of {', '.join(FORMAT_CHOICES)}; 'auto' detects it from the first row."},
    )
    columns: ColumnsConfig = field(default_factory=ColumnsConfig, metadata={"help": "Column names."})
    max_length: int = field(
        default=DEFAULT_MAX_LENGTH, metadata={"help": "Longest sequence (prompt + answer, in tokens) kept per side of a pair."}
    )
    length_policy: str = field(
        default=DEFAULT_LENGTH_POLICY,
        metadata={
            "help": "A pair with a side longer than max_length: 'filter' drops it (as TRL does), 'truncate' "
            "keeps its last max_length tokens. Counted and logged either way."
        },
    )
    on_bad_rows: str = field(
        default="error",
        metadata={
            "help": "A malformed row (missing field, wrong type, empty text, invalid margin, broken JSON line): "
            "'error' stops with its file and row, 'skip' drops it, counts it and shows the first few."
        },
    )
    identical_pairs: str = field(
        default="warn",
        metadata={
            "help": "Pairs whose chosen equals rejected carry no preference: 'warn' counts them and trains on "
            "them (their loss is constant), 'error' refuses the data set, naming the first one."
        },
    )
    shuffle: str = field(
        default="local",
        metadata={
            "help": "'local': each worker shuffles through a buffer of shuffle_buffer_size pairs, reseeded each "
            "epoch; 'global': one full shuffle of the data set before training (costlier), plus the local "
            "buffer; 'none': file order."
        },
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "Pairs held in each worker's shuffle buffer."})
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "A Jinja chat template (or a path to a file holding one) used for conversational data "
            "instead of the tokenizer's own."
        },
    )
    tokenize_actors: int = field(
        default=2, metadata={"help": "Tokenizer tasks running at once (Ray tasks; each worker process loads the "
                             "tokenizer once for all the batches it is given)."}
    )
    tokenize_batch_size: int = field(default=256, metadata={"help": "Rows per tokenization batch."})
    tokenize_num_cpus: float = field(
        default=1.0, metadata={"help": "Logical CPUs of each tokenizer task (fractions allowed)."}
    )
    materialize: bool = field(
        default=True,
        metadata={
            "help": "Tokenize everything before training starts (blocks stay in Ray's object store, spilling to "
            "disk). Gives exact pair counts (so epochs can set the step count) and leaves the training "
            "workers' CPUs free. false streams instead: the data may exceed the object store, but "
            "train.max_steps is required and the cluster needs CPUs left over for tokenization."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the eval split and of the shuffles."})

    def validate(self) -> list[str]:
        """Every problem with the values, as ``"data.<field>: got ...; expected ..."``."""
        problems: list[str] = []

        def bad(name: str, got, expected: str) -> None:
            problems.append(f"data.{name}: got {got!r}; expected {expected}")

        if not isinstance(self.train, str) or not self.train.strip():
            bad("train", self.train, "a path, glob or URI of the training pairs")
        if self.eval is not None and (not isinstance(self.eval, str) or not self.eval.strip()):
            bad("eval", self.eval, "a path, glob or URI of the evaluation pairs, or null")
        if not is_number(self.eval_split) or not 0 <= self.eval_split < 1:
            bad("eval_split", self.eval_split, "a fraction in [0, 1)")
        elif self.eval is not None and self.eval_split:
            bad("eval_split", self.eval_split, "0 when data.eval is set (use one or the other)")
        if self.format not in FORMAT_CHOICES:
            bad("format", self.format, f"one of {', '.join(FORMAT_CHOICES)}")
        if isinstance(self.columns, ColumnsConfig):
            for f in fields(ColumnsConfig):
                value = getattr(self.columns, f.name)
                if not isinstance(value, str) or not value:
                    bad(f"columns.{f.name}", value, "a non-empty column name")
        else:
            bad("columns", self.columns, "a mapping with prompt, chosen, rejected, margin")
        if not is_int(self.max_length) or self.max_length <= 0:
            bad("max_length", self.max_length, "a positive integer")
        if self.length_policy not in LENGTH_POLICIES:
            bad("length_policy", self.length_policy, f"one of {', '.join(LENGTH_POLICIES)}")
        if self.on_bad_rows not in BAD_ROW_POLICIES:
            bad("on_bad_rows", self.on_bad_rows, f"one of {', '.join(BAD_ROW_POLICIES)}")
        if self.identical_pairs not in IDENTICAL_PAIR_POLICIES:
            bad("identical_pairs", self.identical_pairs, f"one of {', '.join(IDENTICAL_PAIR_POLICIES)}")
        if self.shuffle not in SHUFFLE_MODES:
            bad("shuffle", self.shuffle, f"one of {', '.join(SHUFFLE_MODES)}")
        for name in ("shuffle_buffer_size", "tokenize_actors", "tokenize_batch_size"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                bad(name, value, "a positive integer")
        if not is_number(self.tokenize_num_cpus) or self.tokenize_num_cpus <= 0:
            bad("tokenize_num_cpus", self.tokenize_num_cpus, "a positive number of CPUs (fractions allowed)")
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            bad("chat_template", self.chat_template, "a Jinja template string, a path to one, or null")
        if not isinstance(self.materialize, bool):
            bad("materialize", self.materialize, "true or false")
        if not is_int(self.seed):
            bad("seed", self.seed, "an integer")
        return problems


def is_int(value) -> bool:
    """An int that is not a bool (YAML's true is an int to Python). The config checks' one copy."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that is not a bool. The config checks' one copy."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
