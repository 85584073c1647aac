"""An ensemble folder: several reward models served as one (``rayreward serve``).

The folder holds one model folder per member and an ``ensemble.json`` naming them::

    {"members": ["member-0", "member-1", "member-2"],
     "source": "sweep runs/sweep, top 3 by eval_accuracy (max)",
     "scores": [0.71, 0.70, 0.69]}

Paths in ``members`` are relative to the folder (or absolute). ``rayreward tune`` writes
one from its best trials (``tune.export_ensemble``); ``rayreward serve --model DIR``
reads it and serves the mean, standard deviation and ``mean - k * std`` of the members'
rewards per text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

MANIFEST = "ensemble.json"


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble folder (it has an ``ensemble.json``)."""
    return (Path(path) / MANIFEST).is_file()


def read_ensemble(path: str | os.PathLike) -> list[Path]:
    """The member folders of an ensemble folder, in manifest order.

    Raises:
        ValueError: the manifest is not valid JSON or lists no members.
        FileNotFoundError: a member folder is missing.
    """
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{root / MANIFEST}: not valid JSON ({exc})") from None
    members = manifest.get("members") if isinstance(manifest, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ValueError(f"{root / MANIFEST}: 'members' must be a non-empty list of folder names; got {members!r}")
    paths = [Path(m) if os.path.isabs(m) else root / m for m in members]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"{root / MANIFEST}: member folder(s) missing: {', '.join(missing)}")
    return paths


def write_ensemble(path: str | os.PathLike, members: Sequence[str], source: str | None = None,
                   scores: Sequence[float | None] | None = None) -> Path:
    """Writes ``ensemble.json`` into ``path`` (the member folders must already be there).

    Args:
        path: the ensemble folder.
        members: member folders, relative to ``path`` or absolute.
        source: what the members are (e.g. which sweep and metric chose them).
        scores: each member's metric, for the record.

    Returns:
        The manifest's path.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    target = root / MANIFEST
    target.write_text(manifest_text(members, source, scores), encoding="utf-8")
    return target


def manifest_text(members: Sequence[str], source: str | None = None, scores: Sequence[float | None] | None = None
                  ) -> str:
    """The JSON text of an ``ensemble.json`` (for writers to object storage)."""
    manifest: dict[str, Any] = {"members": [str(m) for m in members]}
    if source is not None:
        manifest["source"] = source
    if scores is not None:
        manifest["scores"] = list(scores)
    return json.dumps(manifest, indent=2) + "\n"
