"""Loading tokenizers, and the bundled byte-level BPE tokenizer of the built-in models.

``load_tokenizer("builtin:...")`` gives the tokenizer that ships in the package (trained
on the bundled sample data; any text still tokenizes, byte by byte where needed); any
other name goes to ``AutoTokenizer``.
"""

from __future__ import annotations

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
