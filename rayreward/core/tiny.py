"""Tiny built-in models: real training runs with no hub download.

``builtin:tiny-llama``, ``builtin:tiny-gpt2`` and ``builtin:tiny-bert`` name small
randomly initialised sequence-classification models built from a config with a fixed
seed, paired with the byte-level BPE tokenizer that ships inside the package
(``rayreward.data.tokenizer``). They are what the demo, the tests and the example
configs use on machines with no network.
"""

from __future__ import annotations

from rayreward.data.tokenizer import BUILTIN_PREFIX, is_builtin

_ARCHS = {
    "tiny-llama": "llama",
    "tiny-gpt2": "gpt2",
    "tiny-bert": "bert",
}


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + k for k in _ARCHS]


def build_model(name: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                num_labels: int = 1):
    """Builds a randomly initialised ``*ForSequenceClassification`` (one output by default).

    Args:
        name: ``tiny-llama``, ``tiny-gpt2`` or ``tiny-bert``, with or without the
            ``builtin:`` prefix.
        tokenizer: the tokenizer whose vocabulary and special tokens the model uses.
        hidden_size: width of the model.
        num_layers: number of transformer blocks.
        seed: initialisation seed; the same seed gives the same weights.
        num_labels: outputs of the head (one per reward attribute).

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
    common = dict(num_labels=num_labels, pad_token_id=tokenizer.pad_token_id, vocab_size=vocab)
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
