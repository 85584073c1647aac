"""The checks of a model: a base model to train, or a reward model to score or serve."""

from __future__ import annotations

import os
import re

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_ref(model: str, revision: str | None = None, name: str = "--model", ensemble: bool = False
                    ) -> list[str]:
    """A model to score with (``evaluate``, ``score``, ``serve``): a folder, run folder,
    checkpoint, PEFT adapter folder, hub id or object-store URI that is there, and, when
    its config is at hand, a reward model with one output."""
    from rayreward.evaluation.model_ref import is_hub_id, model_problems

    folder = os.path.expanduser(model)
    if os.path.isfile(os.path.join(folder, "config.json")):
        # A config that does not load or has several outputs says more than "no weights".
        problems = check_model(folder, False, name, one_output=True)
        if problems:
            return problems
    problems = model_problems(model, revision, name, ensemble=ensemble)
    if problems:
        return problems
    if is_hub_id(model) and not os.path.isdir(folder):
        return _hub_reward_head(model, revision, name)
    return []


def _hub_reward_head(model: str, revision: str | None, name: str) -> list[str]:
    import json

    from rayreward.evaluation.model_ref import hub_snapshot_config

    path = hub_snapshot_config(model, revision)
    if os.path.basename(path) != "config.json":
        return []  # an adapter: its head is checked when it is merged
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 1)
    if config.get("auto_map"):
        return [f"{name}: got {model!r}, whose code ships with the checkpoint; scoring runs only built-in "
                "architectures (load it yourself with trust_remote_code=True and save_pretrained a folder)"]
    heads = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
    if not heads:
        return [f"{name}: got {model!r}, a {', '.join(config.get('architectures') or ['model'])} without a reward "
                "head (expected *ForSequenceClassification with one output); train one first (`rayreward train "
                f"model.name_or_path={model}`)"]
    if labels != 1:
        return [f"{name}: got a classification model with {labels} outputs; expected a reward model with one output"]
    return []


def check_model(name_or_path: str, trust_remote_code: bool = False, name: str = "model.name_or_path",
                one_output: bool = False, revision: str | None = None) -> list[str]:
    """The model exists (a folder or a cached hub id), its config parses, and it has one
    output where ``one_output`` (a trained reward model); remote code needs the flag.

    A base model with several labels is fine for training: its head is replaced.
    """
    from rayreward.data.tokenizer import is_builtin

    if is_builtin(name_or_path):
        from rayreward.core.tiny import builtin_names

        if name_or_path not in builtin_names():
            return [f"{name}: got {name_or_path!r}; expected one of {', '.join(builtin_names())}"]
        return []
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            return [f"{name}: got {name_or_path!r}; the folder has no config.json (expected a model folder written "
                    "by save_pretrained)"]
    elif not _HUB_ID.match(name_or_path):
        return [f"{name}: got {name_or_path!r}; no such folder (expected a model folder written by save_pretrained "
                "or a Hugging Face model id such as org/name)"]
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            return [f"{name}: got {name_or_path!r}, whose code ships with the checkpoint; expected "
                    "model.trust_remote_code=true to run it (only for code you trust)"]
        if os.path.isdir(folder):
            return [f"{name}: got {name_or_path!r}; its config.json does not load ({text.splitlines()[0][:200]})"]
        return [f"{name}: got {name_or_path!r}; not a folder here, and not a Hugging Face model id in the local "
                "cache (expected an existing model folder, or a hub id downloaded beforehand)"]
    if getattr(config, "auto_map", None) and not trust_remote_code:
        return [f"{name}: got {name_or_path!r}, whose code ships with the checkpoint; expected "
                "model.trust_remote_code=true to run it (only for code you trust)"]
    labels = getattr(config, "num_labels", 1)
    heads = [a for a in getattr(config, "architectures", None) or [] if a.endswith("ForSequenceClassification")]
    # A plain base model's config says num_labels=2 by default; only a classification
    # head that is there in the weights has to have one output.
    attributes = getattr(config, "rayreward_attributes", None) or []
    if labels == len(attributes) > 1:
        return []  # a multi-attribute reward model: one output per named attribute
    if (one_output or heads) and labels != 1:
        return [f"{name}: got a classification model with {labels} outputs (num_labels={labels}); expected a "
                "reward model with one output (or a base model without a classification head)"]
    return []
