"""The models behind one deployment: encode requests, score token ids, sum up ensembles.

``RewardEngine`` holds one ``RewardScorer`` per member (one member for a plain model),
the scorer of ``rayreward score`` and ``evaluate``: the same tokenization and the same
forward pass, so the server's numbers are the offline ones. Encoding (per request) and
the forward pass (per batch of texts gathered across requests) are separate steps so
that the deployment can batch between them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rayreward.evaluation.model_ref import ModelRef
from rayreward.evaluation.scorer import RewardScorer
from rayreward.serve.requests import ParsedRequest, RequestError


def resolve_members(models: Sequence[str], revision: str | None = None) -> list[ModelRef]:
    """The models of a deployment: one model, several (an ensemble), or an ensemble folder.

    Each is a folder, run folder, checkpoint, PEFT adapter folder, hub id or object-store
    URI (``evaluation.model_ref``); an ensemble folder may itself be in an object store.

    Raises:
        FileNotFoundError, ValueError: a model is not there or holds no model, or a
            manifest is bad.
    """
    from rayreward.evaluation.ensemble import is_ensemble, read_ensemble
    from rayreward.evaluation.model_ref import resolve_model
    from rayreward.runtime import storage

    if len(models) == 1:
        folder = storage.cached_download(models[0]) if storage.is_uri(models[0]) else models[0]
        if is_ensemble(folder):
            return [resolve_model(str(p)) for p in read_ensemble(folder)]
    return [resolve_model(m, revision) for m in models]


@dataclass
class Encoded:
    """A request's texts as token ids: ``ids[t][m]`` is text ``t`` for member ``m``.

    Pairs are flattened chosen first, then rejected (``n_rows`` rows each).
    """

    ids: list[tuple[list[int], ...]]
    n_rows: int
    truncated: int


class RewardEngine:
    """One model or an ensemble, loaded for serving.

    Args:
        members: ``ModelRef``s (``resolve_members``) or model folders.
        max_length: token limit per text; None uses each model's own.
        truncation: cut over-long texts (keep their last tokens) instead of rejecting.
        forward_tokens: token budget of one forward pass (padding included).
        conservative_k: ensembles report ``mean - conservative_k * std``.
        num_threads: torch CPU threads.
        device: None picks a GPU when the replica has one.
    """

    def __init__(self, members: Sequence[ModelRef | str | os.PathLike], max_length: int | None = None, truncation: bool = True,
                 forward_tokens: int = 16384, conservative_k: float = 1.0, num_threads: int | None = None,
                 device: str | None = None):
        from rayreward.evaluation.normalization import load_normalization
        from rayreward.evaluation.scorer import Layout

        # The scorers' own layout is unused: each request brings its layout to encode().
        layout = Layout("single", "implicit_prompt")
        self.members = [m if isinstance(m, ModelRef) else ModelRef(str(m), "folder", str(m)) for m in members]
        self.scorers = [RewardScorer(m, layout, batch_tokens=forward_tokens, max_length=max_length,
                                     num_threads=num_threads, device=device) for m in self.members]
        self.stats = [load_normalization(s.model) for s in self.scorers]
        self.truncation, self.conservative_k = truncation, conservative_k
        # Attributes are reported (and averaged over an ensemble) when every member has
        # the same ones; otherwise only the combined reward.
        specs = {s.spec.names for s in self.scorers}
        self.attributes: tuple[str, ...] = specs.pop() if len(specs) == 1 else ()

    @property
    def ensemble(self) -> bool:
        return len(self.scorers) > 1

    @property
    def can_normalize(self) -> bool:
        return all(s is not None for s in self.stats)

    def require_normalization(self) -> None:
        """Raises ``RequestError`` unless every member has stored reward statistics."""
        if not self.can_normalize:
            missing = [str(m) for m, s in zip(self.members, self.stats) if s is None]
            raise RequestError("normalize", f"no reward statistics stored in {', '.join(missing)}; "
                               "`rayreward evaluate --save-normalization` writes them")

    def encode(self, request: ParsedRequest) -> Encoded:
        """Token ids of every text of a request, for every member.

        Raises:
            RequestError: a text is over the limit and truncation is off, or the
                model cannot read the format (no chat template for messages).
        """
        from rayreward.data.formats import DataFormatError

        per_member = []
        truncated: set[int] = set()
        for scorer in self.scorers:
            try:
                sides = scorer.encode(request.rows, request.layout)
            except DataFormatError as exc:
                raise RequestError(request.fields[0].split("[")[0], str(exc)) from None
            for k, (name, side) in enumerate(sides.items()):
                if side.long and not self.truncation:
                    i = min(side.long)
                    sub = f".{name.removeprefix('reward_')}" if request.pairs else ""
                    raise RequestError(f"{request.fields[i]}{sub}", f"{len(side.full[i])} tokens, over max_length "
                                       f"{scorer.max_length}; truncation is off on this server (shorten the text)")
                truncated |= side.long
            per_member.append([ids for side in sides.values() for ids in side.ids])
        return Encoded(list(zip(*per_member)), len(request.rows), len(truncated))

    def forward(self, ids: Sequence[tuple[list[int], ...]]) -> np.ndarray:
        """Raw rewards, shape ``(texts, members, 1 + attributes)``: the combined reward,
        then each attribute of a multi-attribute model. Each member scores its own ids in
        forward passes bounded by tokens, longest texts first (``RewardScorer.rewards``)."""
        columns = []
        for m, scorer in enumerate(self.scorers):
            values = scorer.attribute_values([t[m] for t in ids])
            combined = scorer._combined(values)[:, None]
            columns.append(np.concatenate([combined, values], axis=1) if self.attributes else combined)
        # (texts, members, 1 + attributes): the combined reward first, then each attribute.
        return np.stack(columns, axis=1)

    def summarize(self, raw: np.ndarray, n_rows: int, pairs: bool, normalize: bool,
                  attributes: bool = True) -> dict[str, Any]:
        """The response body for one request's raw rewards (``forward`` rows of it).

        A multi-attribute model (all members with the same attributes) adds
        ``attributes``: ``{name: [value per text]}`` (the members' mean), or
        ``attributes_chosen``/``attributes_rejected`` for pairs; ``rewards`` is the
        combined reward (normalized when asked; the attributes are in rating units).

        Raises:
            RequestError: normalization asked of a model without stored statistics.
        """
        from rayreward.core.metrics import preference_probability

        values = None
        if raw.ndim == 3:
            values = raw[:, :, 1:].mean(axis=1) if self.attributes and attributes else None
            raw = raw[:, :, 0]

        if normalize:
            self.require_normalization()
            raw = np.stack([s.apply(raw[:, m]) for m, s in enumerate(self.stats)], axis=1)
        mean = raw.mean(axis=1)
        out: dict[str, Any] = {}
        ensemble = {}
        if self.ensemble:
            std = raw.std(axis=1)
            ensemble = {"std": std, "conservative": mean - self.conservative_k * std}
        if pairs:
            chosen, rejected = mean[:n_rows], mean[n_rows:]
            out["reward_chosen"], out["reward_rejected"] = chosen.tolist(), rejected.tolist()
            out["p_chosen"] = np.asarray(preference_probability(chosen - rejected), dtype=np.float64).tolist()
            for key, value in ensemble.items():
                out[f"{key}_chosen"], out[f"{key}_rejected"] = value[:n_rows].tolist(), value[n_rows:].tolist()
        else:
            out["rewards"] = mean.tolist()
            out.update({key: value.tolist() for key, value in ensemble.items()})
        if values is not None:
            named = {n: values[:, a] for a, n in enumerate(self.attributes)}
            if pairs:
                out["attributes_chosen"] = {n: v[:n_rows].tolist() for n, v in named.items()}
                out["attributes_rejected"] = {n: v[n_rows:].tolist() for n, v in named.items()}
            else:
                out["attributes"] = {n: v.tolist() for n, v in named.items()}
        if self.ensemble:
            out["members"] = raw.T.tolist()
        out["normalized"] = bool(normalize)
        return out

    def info(self) -> dict[str, Any]:
        """Model facts for ``GET /info``."""
        import rayreward

        return {
            "members": [
                {
                    "model": m.label,
                    "version": model_version(Path(s.loaded_from) if os.path.isdir(s.loaded_from) else None),
                    "max_length": s.max_length,
                    "architecture": type(s.model).__name__,
                    "normalization": None if n is None else {"mean": n.mean, "std": n.std, "source": n.source},
                }
                for m, s, n in zip(self.members, self.scorers, self.stats)
            ],
            "max_length": min(s.max_length for s in self.scorers if s.max_length) if any(
                s.max_length for s in self.scorers) else None,
            "truncation": self.truncation,
            "ensemble": self.ensemble,
            "attributes": list(self.attributes) or None,
            "attribute_weights": list(self.scorers[0].spec.weights) if self.attributes else None,
            "conservative_k": self.conservative_k if self.ensemble else None,
            "rayreward_version": rayreward.__version__,
        }


def model_version(folder: Path | None) -> str | None:
    """A short fingerprint of a model folder: its config and the names and sizes of its
    weight files (reading gigabytes of weights to hash them would slow every start).
    None when the model was loaded by hub id (no folder of its own here)."""
    if folder is None:
        return None
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json":
            h.update(path.read_bytes())
        elif path.suffix in (".safetensors", ".bin"):
            h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:12]
