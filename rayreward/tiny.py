"""Tiny models and a bundled tokenizer: real training runs with no hub download.

``builtin:tiny-llama``, ``builtin:tiny-gpt2`` and ``builtin:tiny-bert`` name small
randomly initialised sequence-classification models built from a config with a fixed
seed, paired with a byte-level BPE tokenizer that ships inside the package (trained on
the bundled sample data; any text still tokenizes, byte by byte where needed). They
are what the demo, the tests and the example configs use on machines with no network.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"
TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny-bpe"
SAMPLE_DATA_DIR = Path(__file__).parent / "sample_data"

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

_ARCHS = {
    "tiny-llama": "llama",
    "tiny-gpt2": "gpt2",
    "tiny-bert": "bert",
}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + k for k in _ARCHS]


def load_tokenizer():
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


def build_model(name: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """Builds a randomly initialised ``*ForSequenceClassification`` with one output.

    Args:
        name: ``tiny-llama``, ``tiny-gpt2`` or ``tiny-bert``, with or without the
            ``builtin:`` prefix.
        tokenizer: the tokenizer whose vocabulary and special tokens the model uses.
        hidden_size: width of the model.
        num_layers: number of transformer blocks.
        seed: initialisation seed; the same seed gives the same weights.

    Returns:
        The model, with ``config.pad_token_id`` matching the tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in _ARCHS:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {', '.join(builtin_names())}")
    arch = _ARCHS[key]
    vocab = len(tokenizer)
    common = dict(num_labels=1, pad_token_id=tokenizer.pad_token_id, vocab_size=vocab)
    if arch == "llama":
        config = AutoConfig.for_model(
            "llama", hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **common,
        )
    elif arch == "gpt2":
        config = AutoConfig.for_model(
            "gpt2", n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=2048,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **common,
        )
    else:
        config = AutoConfig.for_model(
            "bert", hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=2048,
            **common,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return model


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
