"""What ``--model`` names, resolved once for ``evaluate``, ``score``, ``serve`` and ensembles.

A model reference is one of:

- a local folder: a model written by ``save_pretrained``, a training run folder (its
  ``model/``), a folder of checkpoints (the newest) or one checkpoint
  (``scorer.resolve_model_dir``);
- a PEFT adapter folder (``adapter_config.json``): the base model it names is loaded,
  the adapter applied and merged, the head saved through ``modules_to_save`` included;
- a Hugging Face hub id (``org/name``, with ``--revision``: a branch, tag or commit),
  found through transformers' own cache lookup; with ``HF_HUB_OFFLINE=1`` it must be in
  the local cache already;
- an object-store folder (``s3://``, ``gs://``, ...), downloaded once into
  ``~/.cache/rayreward/models`` (``RAYREWARD_CACHE``) and reused while its objects are
  unchanged (``runtime.storage.cached_download``).

``model_problems`` finds what is wrong with a reference without loading weights (the
preflight calls it before Ray starts); ``resolve_model`` turns it into a ``ModelRef``
that the scoring actors and serve replicas load.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayreward.runtime import storage

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STORE_TIMEOUT_S = 10.0
_MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: what to load, and what the user called it.

    Attributes:
        given: the reference as given (a path, hub id or URI).
        kind: ``folder``, ``hub`` or ``uri``.
        path: the local folder to load (a hub snapshot, a download, an export).
        revision: the hub revision asked for.
        hub_id: the hub id, for a machine whose cache lacks ``path``.
        uri: the object-store folder, for a machine whose cache lacks ``path``.
        temporary: ``path`` is an export of a checkpoint or adapter to a temporary
            folder, which goes away with this process.
    """

    given: str
    kind: str
    path: str
    revision: str | None = None
    hub_id: str | None = None
    uri: str | None = None
    temporary: bool = False

    @property
    def label(self) -> str:
        """How messages and reports name the model (``org/name@rev`` for a hub id)."""
        return f"{self.given}@{self.revision}" if self.revision else self.given

    def __str__(self) -> str:
        return self.label

    def local(self) -> tuple[str, dict[str, Any]]:
        """``(name_or_path, from_pretrained kwargs)`` to load on this machine.

        The resolved folder when this machine has it (the driver's, or a node sharing
        its disk); otherwise the hub id with its revision, or a fresh download of the URI
        into this machine's cache: a scoring actor or serve replica on another node loads
        the same model.
        """
        from rayreward.evaluation.scorer import resolve_model_dir

        if os.path.isdir(self.path):
            return self.path, {}
        if self.uri:
            return str(resolve_model_dir(storage.cached_download(self.uri))), {}
        if self.hub_id and not self.temporary:
            return self.hub_id, {"revision": self.revision} if self.revision else {}
        if self.hub_id:  # an adapter on the hub: merged again here
            return str(resolve_model_dir(hub_snapshot(self.hub_id, self.revision))), {}
        raise FileNotFoundError(f"{self.label}: the folder {self.path} is not on this machine; give a model folder "
                                "every node can read (shared storage, a hub id or an object-store URI)")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is shaped like a hub id (``org/name``) and names no local path."""
    return bool(HUB_ID.match(text)) and not os.path.exists(text)


def resolve_model(given: str | os.PathLike | ModelRef, revision: str | None = None) -> ModelRef:
    """Resolves a model reference to a ``ModelRef`` (downloads an object-store folder,
    exports a checkpoint or adapter to a temporary folder).

    Args:
        given: a folder, a hub id, an object-store URI, or an already resolved ``ModelRef``.
        revision: the hub revision (branch, tag or commit); only for hub ids.

    Raises:
        FileNotFoundError, ValueError: nothing loadable is there (the message names
            ``--model`` and the fix).
    """
    from rayreward.evaluation.scorer import is_temporary_export, resolve_model_dir

    if isinstance(given, ModelRef):
        return given
    text = str(given)
    if revision and not is_hub_id(text):
        raise ValueError(f"--revision {revision}: applies to hub ids (org/name); --model {text} is "
                         f"{'an object-store URI' if storage.is_uri(text) else 'a folder'}")
    if storage.is_uri(text):
        local = storage.cached_download(text)
        folder = resolve_model_dir(local)
        return ModelRef(text, "uri", str(folder), uri=text, temporary=is_temporary_export(folder))
    if os.path.exists(os.path.expanduser(text)) or not is_hub_id(text):
        # Absolute: scoring actors and serve replicas run in other working directories.
        folder = resolve_model_dir(os.path.abspath(os.path.expanduser(text)))
        return ModelRef(text, "folder", str(folder), temporary=is_temporary_export(folder))
    snapshot = hub_snapshot(text, revision)
    folder = resolve_model_dir(snapshot)
    return ModelRef(text, "hub", str(folder), revision=revision, hub_id=text, temporary=is_temporary_export(folder))


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a hub model (downloaded when the hub can be reached).

    The lookup is transformers' own (``transformers.utils.cached_file``, what
    ``from_pretrained`` uses): the revision's ref is followed to a commit in the hub
    cache (``HF_HUB_CACHE``), and with ``HF_HUB_OFFLINE=1`` nothing is fetched.

    Raises:
        FileNotFoundError: not in the cache while offline, or not on the hub.
    """
    snapshot = Path(hub_snapshot_config(repo_id, revision)).parent
    if not _offline():
        from huggingface_hub import list_repo_files, snapshot_download

        # The files from_pretrained would read: safetensors weights when the repo has
        # them (else the .bin ones), config, tokenizer, template, remote code.
        files = list_repo_files(repo_id, revision=revision)
        weights = "*.safetensors*" if any(f.endswith(".safetensors") for f in files) else "*.bin*"
        snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[
            weights, "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]))
    return snapshot


def model_problems(given: str, revision: str | None = None, flag: str = "--model", ensemble: bool = False
                   ) -> list[str]:
    """What stops ``given`` from loading, one line each naming ``flag`` and the fix; no
    weights are read and nothing is downloaded but a hub id's config.

    Args:
        given: a folder, hub id or object-store URI.
        revision: the hub revision asked for.
        flag: how messages name the setting (``--model``, ``serve.models``).
        ensemble: an ensemble folder (``ensemble.json``) is accepted too (``serve``).
    """
    text = str(given)
    if revision and not is_hub_id(text):
        return [f"--revision: got {revision!r}, which applies to hub ids (org/name); {flag} {text!r} is "
                f"{'an object-store URI' if storage.is_uri(text) else 'a folder'} (drop --revision)"]
    if storage.is_uri(text):
        return _uri_problems(text, flag, ensemble)
    folder = Path(os.path.expanduser(text))
    if folder.exists():
        return _folder_problems(folder, text, flag, ensemble)
    if not is_hub_id(text):
        return [f"{flag}: got {text!r}; no such folder (expected a model folder, a run folder, a checkpoint, a "
                "PEFT adapter folder, a hub id such as org/name, or an s3:// or gs:// URI)"]
    try:
        found = Path(hub_snapshot_config(text, revision))
    except FileNotFoundError as exc:
        return [f"{flag}: {exc}"]
    if _offline() and not _loadable(found.parent):
        return [f"{flag}: got {text!r}; its config is in the Hugging Face cache ({found.parent}) but not its "
                f"weights; download the whole model (`hf download {text}`) or pass a model folder"]
    return []


def hub_snapshot_config(repo_id: str, revision: str | None) -> str:
    """The cached ``config.json`` (or ``adapter_config.json``) of a hub model, fetched
    when the hub can be reached. Raises ``FileNotFoundError`` with the fix."""
    from transformers.utils import cached_file

    problem = None
    for name in _MODEL_FILES:
        try:
            found = cached_file(repo_id, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError) as exc:
            problem = exc
            break
        if found:
            return found
    raise FileNotFoundError(_hub_message(repo_id, revision, problem))


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_message(repo_id: str, revision: str | None, problem: Exception | None) -> str:
    rev = f" at revision {revision!r}" if revision else ""
    if _offline():
        fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        return (f"got {repo_id!r}{rev}: no such folder here, and not in the local Hugging Face cache while "
                f"HF_HUB_OFFLINE=1; download it first (`{fetch}` on a machine with network) or pass a model folder")
    why = str(problem).splitlines()[0][:200] if problem else "it has neither config.json nor adapter_config.json"
    return (f"got {repo_id!r}{rev}: no such folder here, and not a model on the Hugging Face Hub ({why}); check "
            "the id and --revision (a private model needs HF_TOKEN), or pass a model folder")


def _folder_problems(folder: Path, text: str, flag: str, ensemble: bool) -> list[str]:
    from rayreward.core.checkpoint import has_manifest
    from rayreward.evaluation.ensemble import MANIFEST

    if not folder.is_dir():
        return [f"{flag}: got {text!r}; a file, expected a model folder"]
    if ensemble and (folder / MANIFEST).is_file():
        return []
    if (folder / "adapter_config.json").is_file() and not has_manifest(str(folder)):
        return _adapter_problems(folder, text, flag)
    if _loadable(folder):
        return []
    return [f"{flag}: got {text!r}; the folder is neither a model (config.json with weights, in it or in model/, "
            "or a checkpoint-* folder) nor a PEFT adapter (adapter_config.json); point it at a folder written by "
            "save_pretrained, a run folder, a checkpoint or an adapter"]


def _adapter_problems(folder: Path, text: str, flag: str) -> list[str]:
    import json

    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{flag}: got {text!r}; its adapter_config.json does not load ({exc})"]
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        return [f"{flag}: got {text!r}, a PEFT adapter whose adapter_config.json names no base model "
                "(base_model_name_or_path); set it, or merge the adapter yourself and pass the merged folder"]
    problems = model_problems(base, config.get("revision") if is_hub_id(base) else None, flag)
    return [p.replace(f"{flag}: got {base!r}", f"{flag}: got {text!r}, an adapter whose base model {base!r}", 1)
            for p in problems]


def _loadable(folder: Path) -> bool:
    from rayreward.evaluation.scorer import WEIGHT_FILES

    def plain(f: Path) -> bool:
        return (f / "config.json").is_file() and any((f / w).is_file() for w in WEIGHT_FILES)

    if plain(folder) or plain(folder / "model") or (folder / "adapter_config.json").is_file():
        return True
    if any(folder.glob("global_step*")):
        return True
    return any(p.is_dir() and p.name.startswith(("checkpoint-", "checkpoint_")) and _loadable(p)
               for p in folder.iterdir())


def _uri_problems(uri: str, flag: str, ensemble: bool) -> list[str]:
    import pyarrow.fs as pafs

    def look(fs, inside):
        info = fs.get_file_info(inside)
        names = ({f.base_name for f in fs.get_file_info(pafs.FileSelector(inside))}
                 if info.type == pafs.FileType.Directory else set())
        return {"type": info.type, "names": names}

    result, problems = storage.ask_store(uri, look, STORE_TIMEOUT_S, flag)
    if problems:
        return problems
    if result["type"] == pafs.FileType.NotFound:
        return [f"{flag}: got {uri!r}; nothing there in the object store (expected a folder written by "
                "save_pretrained, as `rayreward train` exports to <storage.path>/<name>/model)"]
    if result["type"] != pafs.FileType.Directory:
        return [f"{flag}: got {uri!r}; a single object, expected a model folder"]
    names = result.get("names", set())
    wanted = set(_MODEL_FILES) | {"model"} | ({"ensemble.json"} if ensemble else set())
    if not names & wanted and not any(n.startswith(("checkpoint-", "checkpoint_")) for n in names):
        return [f"{flag}: got {uri!r}; the folder holds {sorted(names)[:8]}, neither a model (config.json) nor a "
                "PEFT adapter (adapter_config.json); point it at an exported model folder"]
    return []
