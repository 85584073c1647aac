"""What the trainer loads for a TRL-style call: the model by id, its tokenizer, TRL's token settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from rayreward.core.model import ensure_pad_token, load_reward_model, prepare_model

if TYPE_CHECKING:
    from rayreward.core.config import RewardConfig

logger = logging.getLogger(__name__)


def model_and_tokenizer(model, model_init, tokenizer, args: RewardConfig, quantization_config=None):
    """The model (loaded when given by id) and its tokenizer, with TRL's token settings applied.

    Args:
        model: a model object, a hub id/folder, or None (with ``model_init``).
        model_init: the trainer's ``model_init`` (only checked for presence).
        tokenizer: the tokenizer given to the trainer, or None to load it from the model's id.
        args: the ``RewardConfig`` (``model_init_kwargs``, ``trust_remote_code``,
            ``eos_token``, ``pad_token``, ``chat_template_path``, ``seed``).
        quantization_config: TRL's trainer argument, merged into the loading arguments.

    Returns:
        ``(model, tokenizer, added_token_ids)``; the tokenizer has a pad token, mirrored
        on the model; ``added_token_ids`` are the tokens a ``chat_template_path``
        tokenizer brought (their embedding rows train under PEFT, as in TRL).

    Raises:
        ValueError: no model, no tokenizer to be found, a token not in the vocabulary.
    """
    from transformers import AutoTokenizer, set_seed

    init_kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None:
        if not isinstance(model, str):
            logger.warning("quantization_config is ignored: the model is already built")
        elif "quantization_config" in init_kwargs:
            raise ValueError("quantization_config is set both on the trainer and in args.model_init_kwargs; "
                             "set it in one place")
        init_kwargs["quantization_config"] = quantization_config
    if isinstance(model, str):
        # The new head is initialised at random: seed it, as TRL does.
        set_seed(args.seed)
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        name = model
        model = load_reward_model(name, **init_kwargs)
    elif model is not None:
        if args.model_init_kwargs:
            logger.warning("args.model_init_kwargs is ignored: the model is already built")
        name = getattr(model.config, "name_or_path", None)
    elif model_init is None:
        raise ValueError("pass a model (or a model name/path) or a model_init")
    if tokenizer is None:
        if model is None or not name:
            raise ValueError(
                "RewardTrainer needs the model's tokenizer: pass processing_class=... (or tokenizer=...), or "
                "give the model by id so that its tokenizer loads from the same id"
            )
        from rayreward.data.tokenizer import is_builtin, load_tokenizer

        tokenizer = load_tokenizer(name) if is_builtin(name) else AutoTokenizer.from_pretrained(
            name, revision=init_kwargs.get("revision"), trust_remote_code=args.trust_remote_code)
    from rayreward.data.tokenizer import apply_token_settings

    # The same settings, checked and applied by the same function, as a `rayreward train`
    # job's tokenizer (rayreward.data.tokenizer.TokenizerSpec): both paths give the same ids.
    apply_token_settings(tokenizer, args.eos_token, args.pad_token)
    if args.eos_token is not None and model is not None:
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        text_config.eos_token_id = tokenizer.eos_token_id
    added: list[int] = []
    if args.chat_template_path is not None:
        added = _load_chat_template(tokenizer, args.chat_template_path, model,
                                    trust_remote_code=args.trust_remote_code)
    ensure_pad_token(tokenizer, model)
    return model, tokenizer, added


def _load_chat_template(tokenizer, path: str, model, **from_pretrained) -> list[int]:
    """Sets the chat template from Jinja text or a file, or clones another tokenizer's (with
    its tokens, embeddings resized: ``rayreward.core.chat_template``). Returns the added ids."""
    from rayreward.data.tokenizer import is_template_text

    if is_template_text(path):
        from rayreward.data.tokenizer import set_chat_template

        set_chat_template(tokenizer, path)
        return []
    from rayreward.core.chat_template import clone_chat_template

    return clone_chat_template(model, tokenizer, path, **from_pretrained)


def prepared_model_init(model_init: Callable, tokenizer, args: RewardConfig) -> Callable:
    """Wraps ``model_init`` so that every model it builds (one per Tune trial) gets the
    same set-up as ``model=``: pad token on the config, dropout off, cache off."""
    import inspect

    takes_trial = len(inspect.signature(model_init).parameters) == 1

    def init(trial=None):
        model = model_init(trial) if takes_trial else model_init()
        ensure_pad_token(tokenizer, model)
        return prepare_model(model, args)

    return init
