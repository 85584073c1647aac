"""Loading tokenizers, and the bundled byte-level BPE tokenizer of the built-in models.

``load_tokenizer("builtin:...")`` gives the tokenizer that ships in the package (trained
on the bundled sample data; any text still tokenizes, byte by byte where needed); any
other name goes to ``AutoTokenizer``. A ``TokenizerSpec`` is everything that decides the
token ids of a text (model, revision, remote code, chat template, EOS and pad tokens):
built once from a job and loaded the same way by the Ray Data tokenizers, the training
workers and the checks before a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-bpe"
SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "sample_data"

# A ChatML-style template; the tokenizer's EOS closes every turn, so a rendered
# conversation ends with EOS like a text pair does, and it opens with BOS because
# apply_chat_template adds no special tokens of its own (a text pair gets BOS from the
# tokenizer's post-processor).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if not loop.first %}\n{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n<|assistant|>\n{% endif %}"
)


def is_builtin(name: str) -> bool:
    """Whether ``name`` names a built-in model (``builtin:tiny-llama`` and the like)."""
    return str(name).startswith(BUILTIN_PREFIX)


@dataclass(frozen=True)
class TokenizerSpec:
    """What decides the token ids of a text: one spec, loaded alike on every path.

    Attributes:
        name_or_path: a hub id, a folder, or a ``builtin:`` model name.
        revision: the hub revision (branch, tag or commit) of ``name_or_path``.
        trust_remote_code: run tokenizer code shipped with a hub checkpoint.
        chat_template: the chat template for conversations: a Jinja template, a
            ``.jinja``/``.j2`` file, or a tokenizer (hub id or folder) whose template is
            cloned, its special tokens added to this tokenizer (as TRL's
            ``chat_template_path`` does); None keeps the tokenizer's own.
        eos_token: a token of the vocabulary to use as EOS (appended to text pairs).
        pad_token: a token of the vocabulary to pad with.

    Example:
        >>> tok = TokenizerSpec("builtin:tiny-llama", eos_token="<unk>").load()
        >>> tok.eos_token
        '<unk>'
    """

    name_or_path: str
    revision: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None

    def load(self):
        """The tokenizer with every setting of the spec applied.

        Raises:
            ValueError: an EOS or pad token not in the vocabulary.
        """
        if is_builtin(self.name_or_path):
            tokenizer = builtin_tokenizer()
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, revision=self.revision,
                                                      trust_remote_code=self.trust_remote_code)
        apply_token_settings(tokenizer, self.eos_token, self.pad_token, self.chat_template)
        return tokenizer


def apply_token_settings(tokenizer, eos_token: str | None = None, pad_token: str | None = None,
                         chat_template: str | None = None) -> list[str]:
    """Sets EOS, pad and the chat template on ``tokenizer``; returns the special tokens added.

    The tokens added (those of a cloned template missing from this vocabulary) need the
    model's embeddings resized to ``len(tokenizer)``.

    Raises:
        ValueError: an EOS or pad token not in the vocabulary.
    """
    for name, token in (("eos_token", eos_token), ("pad_token", pad_token)):
        if token is not None and token not in tokenizer.get_vocab():
            raise ValueError(
                f"{name}={token!r} is not in the vocabulary of the tokenizer {type(tokenizer).__name__}; "
                "pick a token the tokenizer has, or add it first (tokenizer.add_special_tokens)"
            )
    if eos_token is not None:
        tokenizer.eos_token = eos_token
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return set_chat_template(tokenizer, chat_template) if chat_template else []


def is_template_text(template: str) -> bool:
    """Whether ``template`` is a chat template itself or a file holding one (not a tokenizer to clone)."""
    return "{{" in template or "{%" in template or os.path.isfile(template)


def set_chat_template(tokenizer, template: str, **from_pretrained) -> list[str]:
    """Gives ``tokenizer`` a chat template: Jinja text, a template file, or another tokenizer's.

    Cloning another tokenizer's template (a hub id or a folder, loaded with
    ``from_pretrained``'s arguments) follows TRL's ``chat_template_path``: the tokens that
    tokenizer added and this one lacks are added (so its turn markers are single tokens)
    and its EOS becomes this one's. Returns the tokens added: the model's embeddings must
    then grow to ``len(tokenizer)`` (``fit_embeddings``).

    Raises:
        ValueError: the tokenizer to clone has no chat template.
    """
    if "{{" in template or "{%" in template:
        tokenizer.chat_template = template
        return []
    if os.path.isfile(template):
        with open(template, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
        return []
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(template, **from_pretrained)
    if not getattr(source, "chat_template", None):
        raise ValueError(f"chat template {template!r}: that tokenizer has no chat template; give one that has, "
                         "or a Jinja template (text or a .jinja file)")
    vocab = tokenizer.get_vocab()
    added = [t for t in source.added_tokens_decoder.values() if t.content not in vocab]
    # AddedToken objects keep whether each token is special (not split, skipped on decode).
    tokenizer.add_tokens(added)
    tokenizer.chat_template = source.get_chat_template()
    if source.eos_token is not None:
        tokenizer.eos_token = source.eos_token
    return [t.content for t in added]


def fit_embeddings(model, tokenizer, multiple_of: int = 64) -> bool:
    """Grows the model's token embeddings to cover the tokenizer (tokens a cloned chat
    template added), rounded up to ``multiple_of`` as TRL does. Returns True when resized."""
    if model is None or len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple_of)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    text_config.eos_token_id = tokenizer.eos_token_id
    return True


def load_tokenizer(name_or_path: str, **kwargs):
    """The tokenizer of a model id or folder; the bundled one for ``builtin:`` names."""
    if is_builtin(name_or_path):
        return builtin_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def builtin_tokenizer():
    """The bundled byte-level BPE tokenizer (pad ``<pad>``, EOS ``</s>``, BOS ``<s>``)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 2048
    return tok



def train_tokenizer(texts, vocab_size: int = 2048):
    """Trains the byte-level BPE that ``load_tokenizer`` ships (used to write the asset)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # BOS starts every encoded text, as Llama's tokenizer does.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _write_tokenizer_asset() -> None:
    import json

    texts = []
    for name in ("train.jsonl", "eval.jsonl"):
        for line in (SAMPLE_DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["prompt"], row["chosen"], row["rejected"]]
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    train_tokenizer(texts).save(str(TOKENIZER_DIR / "tokenizer.json"))


if __name__ == "__main__":
    _write_tokenizer_asset()
