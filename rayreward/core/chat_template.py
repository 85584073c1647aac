"""``chat_template_path`` given as a tokenizer: take over its chat template and tokens.

TRL 1.16's ``RewardConfig.chat_template_path`` accepts a ``.jinja`` file or the id/folder
of another tokenizer. For a tokenizer, TRL copies its chat template, adds the tokens it
added on top of its vocabulary (``<|im_start|>`` and the like) that this tokenizer lacks,
makes its EOS this tokenizer's EOS (on the model's config too), and resizes the model's
input embeddings to the new vocabulary rounded up to a multiple of 64, filling the rounded
rows with ``<extra_id_N>`` tokens so that tokenizer and embeddings agree. With a
``peft_config``, the rows of the added tokens are trained (``trainable_token_indices``).

One difference, on purpose: embeddings that already have more rows than the tokenizer
(Qwen ships 151,936 rows for a 151,665-token vocabulary) are never shrunk; they grow only
when an added token needs a row.
"""

from __future__ import annotations

import copy
import logging

logger = logging.getLogger(__name__)

PAD_EMBEDDINGS_TO = 64  # TRL's default rounding of the resized vocabulary


def clone_chat_template(model, tokenizer, source: str, **from_pretrained) -> list[int]:
    """Gives ``tokenizer`` the chat template, added tokens and EOS of the tokenizer ``source``.

    Args:
        model: the model whose input embeddings must cover the new tokens; None is
            accepted only when no token has to be added.
        tokenizer: the tokenizer to change (in place).
        source: a tokenizer folder or hub id.
        **from_pretrained: ``AutoTokenizer.from_pretrained`` arguments (``revision``,
            ``trust_remote_code``).

    Returns:
        The ids of the tokens added to ``tokenizer`` (the source's tokens, then any
        ``<extra_id_N>`` filling the rounded embedding rows).

    Raises:
        ValueError: ``source`` has no chat template, or tokens must be added and there
            is no model to resize.

    Example:
        >>> added = clone_chat_template(model, tokenizer, "Qwen/Qwen3-0.6B")
        >>> tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    """
    from transformers import AddedToken

    from rayreward.data.tokenizer import set_chat_template

    if model is None:
        # Nothing may be added without a model to grow: look before changing the tokenizer.
        needed = set_chat_template(copy.deepcopy(tokenizer), source, **from_pretrained)
        if needed:
            raise ValueError(f"chat_template_path={source!r} adds tokens {needed} to the tokenizer, so the model's "
                             "embeddings must grow: pass model=..., or clone the template inside model_init")
    new = set_chat_template(tokenizer, source, **from_pretrained)
    added = [tokenizer.convert_tokens_to_ids(t) for t in new]
    if model is None:
        return added
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    config.eos_token_id = tokenizer.eos_token_id
    rows = model.get_input_embeddings().num_embeddings
    wanted = len(tokenizer.get_vocab())
    if wanted > rows:
        model.resize_token_embeddings(wanted, pad_to_multiple_of=PAD_EMBEDDINGS_TO)
        rows = model.get_input_embeddings().num_embeddings
        # Rows past the vocabulary get tokens of their own, as TRL does, so that the
        # tokenizer's length and the embedding table agree.
        index = 0
        while len(tokenizer.get_vocab()) < rows:
            filler = AddedToken(f"<extra_id_{index}>")
            if tokenizer.add_tokens(filler) == 1:
                added.append(tokenizer.convert_tokens_to_ids(filler.content))
            index += 1
        logger.info("chat_template_path=%s: added %d token(s); embeddings resized to %d rows", source, len(added), rows)
    return added


def train_added_tokens(peft_config, model, added: list[int]):
    """``peft_config`` with the rows of ``added`` tokens trainable (``trainable_token_indices``).

    The input embedding is named by its module (``embed_tokens``, ``wte``,
    ``word_embeddings``), not assumed to be Llama's.
    """
    if not added or peft_config is None:
        return peft_config
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding).rsplit(".", 1)[-1]
    peft_config = copy.deepcopy(peft_config)
    indices = peft_config.trainable_token_indices
    if indices is None:
        peft_config.trainable_token_indices = {name: list(added)}
    elif isinstance(indices, dict):
        indices[name] = sorted(set(indices.get(name, [])) | set(added))
    else:
        peft_config.trainable_token_indices = sorted(set(indices) | set(added))
    return peft_config
