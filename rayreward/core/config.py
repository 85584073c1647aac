"""``RewardConfig``: the training arguments of a reward model."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from rayreward.data.config import DEFAULT_LENGTH_POLICY, DEFAULT_MAX_LENGTH
from rayreward.data.formats import LENGTH_POLICIES
from rayreward.runtime._framework_internals import training_arguments_dict_fields

# The losses (rayreward.core.loss) and attention backends (rayreward.core.attention) a
# RewardConfig may name; kept here, where the config is checked.
LOSS_TYPES = ("bradley_terry", "plackett_luce", "regression")
ATTENTION_BACKENDS = ("auto", "dense", "banded", "segment", "varlen", "flex")


def losses_for(shape: str) -> tuple[str, ...]:
    """The ``loss_type`` values that can train data of one shape.

    Args:
        shape: a data format (``text``, ``ranked``, ``ratings``, ...) or a data kind
            (``pairs``, ``groups``, ``ratings``).

    Returns:
        ``("regression",)`` for ratings; the two ranking losses for pairs and groups
        (``plackett_luce`` on a pair is the Bradley-Terry loss without margin).
    """
    return ("regression",) if shape == "ratings" else ("bradley_terry", "plackett_luce")


@dataclass
class RewardConfig(TrainingArguments):
    """Training arguments for ``RewardTrainer``.

    Everything ``transformers.TrainingArguments`` takes, plus the fields below. Where
    the two share a name, the default here wins (``activation_checkpointing`` and its
    alias ``gradient_checkpointing`` are on; ``remove_unused_columns`` is off because
    the pairs are not model inputs).

    Every field of TRL 1.16's ``RewardConfig`` is here with its meaning and default
    (``model_init_kwargs``, ``trust_remote_code``, ``chat_template_path``,
    ``disable_dropout``, ``dataset_num_proc``, ``eos_token``, ``pad_token`` (deprecated
    there too), ``max_length``, ``pad_to_multiple_of``, ``center_rewards_coefficient``,
    ``activation_offloading``). Two of TRL's changed ``TrainingArguments`` defaults are
    taken: ``learning_rate`` 1e-4 and ``logging_steps`` 10; ``bf16`` stays off (TRL turns
    it on): mixed precision is asked for, CPU runs and older GPUs stay float32.

    Example:
        >>> args = RewardConfig(output_dir="out", max_length=512, learning_rate=1e-5)
    """

    # TrainingArguments parses these fields from JSON strings (command line); ours too.
    _VALID_DICT_FIELDS = training_arguments_dict_fields() + ["model_init_kwargs"]

    learning_rate: float = field(default=1e-4, metadata={"help": "The initial learning rate of AdamW (TRL's "
                                                                  "RewardConfig default)."})
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log (and print a progress line) every N optimizer steps; a float in (0, 1) is a fraction "
                          "of the run (TRL's RewardConfig default: 10)."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments of AutoModelForSequenceClassification.from_pretrained when the model is "
            "given by name (its 'revision' is used for the tokenizer too). The weights load in float32 unless "
            "'dtype' says otherwise; bf16/fp16 compute comes from the bf16/fp16 flags."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model and tokenizer code shipped with a hub checkpoint (model given by name)."},
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={
            "help": "Chat template to render conversations with: a .jinja/.j2 file, or a tokenizer folder/name "
            "whose template, added tokens and EOS are copied (as TRL: the model's embeddings grow to fit them)."
        },
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Processes tokenizing a datasets.Dataset (datasets.Dataset.map's num_proc)."},
    )
    eos_token: str | None = field(
        default=None,
        metadata={"help": "Token ending a text answer (appended when missing); None: the tokenizer's EOS."},
    )
    pad_token: str | None = field(
        default=None,
        metadata={"help": "Deprecated (as in TRL): set tokenizer.pad_token instead. None: pad, else EOS."},
    )
    pad_to_multiple_of: int | str | None = field(
        default="auto",
        metadata={
            "help": "Pad batches to a multiple of this length. 'auto': 128 on Neuron devices, which compile per "
            "shape, no rounding elsewhere."
        },
    )
    activation_offloading: bool = field(
        default=False,
        metadata={"help": "Keep the activations saved for the backward pass in CPU memory."},
    )
    max_length: int | None = field(
        default=DEFAULT_MAX_LENGTH,
        metadata={"help": "Longest sequence (prompt + answer, in tokens) used; None keeps all pairs."},
    )
    length_policy: str = field(
        default=DEFAULT_LENGTH_POLICY,
        metadata={
            "help": "What happens to a pair with a side longer than max_length: 'filter' drops it "
            "(as TRL does), 'truncate' keeps its last max_length tokens. The count is logged either way."
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the term mean((r_chosen + r_rejected)^2) that keeps rewards centred "
            "on zero; None turns it off. 0.01 is a common value."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set every dropout probability of the model to 0."}
    )
    use_margin: bool = field(
        default=True,
        metadata={"help": "Subtract the data's 'margin' column inside the loss when the data has one."},
    )
    loss_type: str = field(
        default="bradley_terry",
        metadata={
            "help": "The loss. 'bradley_terry' (default): -logsigmoid(r_chosen - r_rejected - margin) for pairs, "
            "and over every ordered pair of a ranked group (from one forward pass of its K responses); "
            "'plackett_luce': the listwise likelihood of each group's order (ties: Breslow); 'regression': "
            "mean squared error on ratings (the 'response' + attribute columns shape)."
        },
    )
    attributes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of the rated attributes: ratings data has one numeric column per name (missing = not "
            "rated), and the model gets one output per attribute. None: one scalar reward."
        },
    )
    attribute_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "One weight per attribute; the combined reward is sum(weight * attribute) and is what "
            "rankings train and score/serve report. Recorded in the exported config. None: equal weights 1/A."
        },
    )
    standardize_targets: bool = field(
        default=False,
        metadata={
            "help": "Regression: fit (rating - mean) / std per attribute, with mean and std from the training "
            "data (recorded in the exported config, so scores come back in rating units)."
        },
    )
    group_by_length: bool | None = field(
        default=None,
        metadata={
            "help": "Batch training pairs with others of similar length (within a shuffle buffer of "
            "length_group_batches batches; order stays random across buffers). None (default): on where "
            "padding_free is off (encoders), whose batches are padded."
        },
    )
    length_group_batches: int = field(
        default=50,
        metadata={"help": "Batches' worth of pairs sorted by length together when group_by_length is on."},
    )
    padding_free: bool | None = field(
        default=None,
        metadata={
            "help": "Pack several training pairs into one row with attention that never crosses sequences, "
            "instead of padding each. None (default): on for causal decoders where it is exact "
            "(Llama, GPT-2, Mistral, Qwen2/3 with sdpa or eager attention), off for encoders."
        },
    )
    share_prefix: bool | None = field(
        default=None,
        metadata={
            "help": "Compute the tokens that chosen and rejected share at the start once per pair; each "
            "answer attends to that prefix and to itself. None (default): on where padding_free is."
        },
    )
    attention_backend: str = field(
        default="auto",
        metadata={
            "help": "Attention of packed batches: 'banded' (the 4D mask in blocks of queries, each over only "
            "the keys it can see), 'segment' (SDPA per pair, only the unmasked blocks), "
            "'varlen' (CUDA varlen flash attention), 'flex' (flex attention with a block mask; backward on "
            "CUDA only), 'dense' (a 4D mask, the fallback), or 'auto': varlen on CUDA in bf16/fp16, banded "
            "on CPU, segment elsewhere, dense for models whose attention is not sdpa."
        },
    )
    # None stands for "not given" so that a value given under the older name
    # `gradient_checkpointing` can be told apart from this default; it resolves to True.
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass: less memory, about 20-30% slower. "
            "Defaults to True (its older name gradient_checkpointing is accepted too)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept off: the trainer selects the pair columns itself."}
    )

    def __post_init__(self):
        # `gradient_checkpointing*` are the older names of `activation_checkpointing*`. The
        # new name wins when both are set: copies of a config (dataclasses.replace,
        # RewardConfig(**args.to_dict())) carry the old name mirrored from the new one.
        if self.activation_checkpointing is None:
            self.activation_checkpointing = True if self.gradient_checkpointing is None else self.gradient_checkpointing
        if self.activation_checkpointing_kwargs is None:
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            # Reentrant checkpointing drops gradients of inputs that do not require them,
            # which breaks LoRA (frozen embeddings); the non-reentrant variant does not.
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        if isinstance(self.pad_to_multiple_of, str) and self.pad_to_multiple_of != "auto":
            # The command line hands every value over as a string.
            text = self.pad_to_multiple_of.strip().lower()
            self.pad_to_multiple_of = None if text in ("none", "null", "") else int(text)
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of != "auto" and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of: got {self.pad_to_multiple_of!r}; expected a positive integer, 'auto' or None"
            )
        for name in ("eos_token", "pad_token"):
            # TrainingArguments.to_dict() hides every "*_token" field behind "<NAME>" (it
            # means hub tokens); a copy made with RewardConfig(**args.to_dict()) must not
            # take that placeholder for a token.
            if getattr(self, name) == f"<{name.upper()}>":
                setattr(self, name, None)
        if self.pad_token is not None:
            warnings.warn(
                "RewardConfig.pad_token is deprecated (as in TRL 1.x): set tokenizer.pad_token and pass the "
                "tokenizer as processing_class instead",
                FutureWarning,
                stacklevel=3,
            )
        if self.dataset_num_proc is not None and (not isinstance(self.dataset_num_proc, int) or self.dataset_num_proc < 1):
            raise ValueError(f"dataset_num_proc: got {self.dataset_num_proc!r}; expected a positive integer or None")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend: got {self.attention_backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.length_policy not in LENGTH_POLICIES:
            raise ValueError(
                f"length_policy: got {self.length_policy!r}; expected one of {', '.join(LENGTH_POLICIES)}"
            )
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length: got {self.max_length!r}; expected a positive integer or None")
        if not isinstance(self.length_group_batches, int) or self.length_group_batches < 1:
            raise ValueError(
                f"length_group_batches: got {self.length_group_batches!r}; expected a positive integer"
            )
        self._check_attributes()
        super().__post_init__()
        if self.pad_to_multiple_of == "auto":
            # Neuron compiles one graph per input shape; rounding bounds how many. Asking
            # for `self.device` here would set up the distributed state too early (a Ray
            # worker adopts its process group after building the arguments).
            import importlib.util

            self.pad_to_multiple_of = 128 if importlib.util.find_spec("torch_neuronx") else None

    def _check_attributes(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: got {self.loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        if isinstance(self.attributes, str):  # a single name, e.g. from the command line
            self.attributes = [a.strip() for a in self.attributes.split(",") if a.strip()]
        if self.attributes is not None:
            names = list(self.attributes)
            if not names or not all(isinstance(a, str) and a for a in names) or len(set(names)) != len(names):
                raise ValueError(f"attributes: got {self.attributes!r}; expected a list of distinct, non-empty names")
            self.attributes = names
        if self.attribute_weights is not None:
            if self.attributes is None:
                raise ValueError("attribute_weights needs attributes (one weight per attribute name)")
            weights = list(self.attribute_weights)
            if len(weights) != len(self.attributes) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights
            ):
                raise ValueError(
                    f"attribute_weights: got {self.attribute_weights!r}; expected {len(self.attributes)} finite "
                    f"numbers, one per attribute ({', '.join(self.attributes)})"
                )
            self.attribute_weights = [float(w) for w in weights]

    @property
    def num_labels(self) -> int:
        """Outputs of the reward head: one per attribute, or one."""
        return len(self.attributes) if self.attributes else 1

    def combination_weights(self) -> list[float]:
        """The weights that combine the attributes into one reward (equal weights by default)."""
        n = self.num_labels
        return list(self.attribute_weights) if self.attribute_weights else [1.0 / n] * n
