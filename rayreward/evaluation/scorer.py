"""Scoring rows with a reward model: what each Ray Data actor runs.

``RewardScorer`` loads one model and its tokenizer, turns rows into token ids through
``rayreward.data.formats`` (the same ids the trainer builds: prompt prepended or chat
template applied, EOS appended) and runs them through the model in forward batches
bounded by a token budget, so the reward of a text is the one the model gives that
text alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rayreward.data.formats import (
    BadRowError,
    ColumnNames,
    DataFormatError,
    PairEncoder,
    detect_format,
    row_problem,
)

logger = logging.getLogger(__name__)

# Most tokens (rows x longest row) in one forward pass: the one default of score, evaluate and the CLI.
DEFAULT_BATCH_TOKENS = 16384
TOKENS_COLUMN = "_rayreward_tokens"
TRUNCATED_COLUMN = "_rayreward_truncated"
# Single answers reuse the pair checks with both sides naming the answer column; no
# column can have this name, so a 'margin' column of such data is left alone.
_NO_MARGIN = "\x00no-margin"


@dataclass(frozen=True)
class Layout:
    """How the rows of a data set are read.

    Attributes:
        kind: ``pairs`` (chosen and rejected answers, rewards ``reward_chosen`` and
            ``reward_rejected``) or ``single`` (one answer, reward ``reward``).
        fmt: a format of ``rayreward.data.formats``.
        names: the columns; for ``single``, ``names.chosen`` is the answer column.
    """

    kind: str
    fmt: str
    names: ColumnNames = field(default_factory=ColumnNames)

    @property
    def answer_columns(self) -> tuple[str, ...]:
        return (self.names.chosen, self.names.rejected) if self.kind == "pairs" else (self.names.chosen,)

    @property
    def reward_columns(self) -> tuple[str, ...]:
        return ("reward_chosen", "reward_rejected") if self.kind == "pairs" else ("reward",)


def detect_layout(
    columns: Sequence[str],
    first_row: Mapping[str, Any] | None,
    text_column: str | None = None,
    prompt_column: str = "prompt",
    source: str = "data",
) -> Layout:
    """Finds out whether rows are preference pairs or single answers, and their format.

    Single answers are a ``text`` column (whole text), a ``prompt`` with a ``response``
    or ``completion`` (the prompt is prepended), or a ``messages`` conversation
    (rendered with the chat template). ``text_column`` names the answer column when it
    is called something else.

    Raises:
        DataFormatError: no known layout fits; the message lists the columns found.
    """
    cols = list(columns)
    if text_column is None and "chosen" in cols and "rejected" in cols:
        names = ColumnNames(prompt=prompt_column)
        return Layout("pairs", detect_format(cols, first_row, names, source=source), names)
    answer = text_column or next((c for c in ("messages", "response", "completion", "text") if c in cols), None)
    if answer is None or answer not in cols:
        wanted = f"the column {text_column!r}" if text_column else (
            "'chosen' and 'rejected' (pairs), 'text', 'prompt' + 'response'/'completion', or 'messages'"
        )
        raise DataFormatError(f"{source}: found columns {sorted(cols)}; expected {wanted} (--text-column names another)")
    names = ColumnNames(prompt=prompt_column, chosen=answer, rejected=answer, margin=_NO_MARGIN)
    value = (first_row or {}).get(answer)
    if value is not None and not isinstance(value, str):
        fmt = "conversational"
    elif prompt_column in cols:
        fmt = "explicit_prompt"
    else:
        fmt = "implicit_prompt"
    return Layout("single", fmt, names)


def model_max_length(model, tokenizer) -> int | None:
    """Longest input the model takes: its position table, else the tokenizer's limit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else None


@dataclass
class EncodedColumn:
    """One answer column of encoded rows.

    Attributes:
        full: token ids before truncation.
        ids: token ids the model reads (``full``, or cut to ``max_length``).
        long: positions of the rows longer than ``max_length``.
    """

    full: list[list[int]]
    ids: list[list[int]]
    long: set[int]


class RewardScorer:
    """Adds rewards to batches of rows (a ``pyarrow.Table`` in, one out).

    One instance holds one model: Ray Data builds one per actor of the pool.

    Args:
        model_dir: a model directory written by ``save_pretrained`` (with tokenizer), or
            a ``model_ref.ModelRef`` (hub id, object-store copy, exported adapter).
        layout: how rows are read (``detect_layout``).
        batch_tokens: most tokens (rows x longest row, padding included) in one forward
            pass; texts are sorted by length first so batches carry little padding.
        max_length: texts longer than this keep their last tokens (see
            ``PairEncoder``); None uses the model's own limit.
        normalize: report ``(reward - mean) / std`` with the model's stored statistics.
        keep_columns: input columns to pass through; None keeps them all.
        with_lengths: add ``_rayreward_tokens`` (tokens of the longer answer before
            truncation) and ``_rayreward_truncated``.
        num_threads: torch CPU threads; defaults to the CPUs Ray gave the actor.
        source: how errors name the data.
        device: where the model runs; None picks a GPU when there is one.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | Any,
        layout: Layout,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_length: int | None = None,
        normalize: bool = False,
        keep_columns: Sequence[str] | None = None,
        with_lengths: bool = False,
        num_threads: int | None = None,
        source: str = "data",
        device: str | None = None,
    ):
        import torch

        from rayreward.core.model import ensure_pad_token, load_reward_model
        from rayreward.data.tokenizer import load_tokenizer
        from rayreward.evaluation.normalization import load_normalization

        if batch_tokens < 1:
            raise ValueError(f"batch_tokens: got {batch_tokens}; expected a positive integer")
        if num_threads:
            torch.set_num_threads(num_threads)
        # A ModelRef (evaluation.model_ref) loads from this machine's copy, or fetches one.
        name, kwargs = model_dir.local() if hasattr(model_dir, "local") else (str(model_dir), {})
        self.loaded_from = name
        tokenizer, model = load_tokenizer(name, **kwargs), load_reward_model(name, **kwargs)
        ensure_pad_token(tokenizer, model)
        self._attach(model, tokenizer, layout, batch_tokens, max_length, source)
        self.keep_columns = None if keep_columns is None else list(keep_columns)
        self.with_lengths = with_lengths
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.normalization = load_normalization(self.model) if normalize else None
        if normalize and self.normalization is None:
            raise ValueError(f"{getattr(model_dir, 'label', model_dir)}: the model has no reward statistics; write them with "
                             "`rayreward evaluate --save-normalization` or drop --normalize")

    def _attach(self, model, tokenizer, layout: Layout, batch_tokens: int, max_length: int | None,
                source: str) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.layout, self.batch_tokens, self.source = layout, batch_tokens, source
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.keep_columns, self.with_lengths, self.normalization = None, False, None
        self._encoders: dict[Layout, tuple[PairEncoder, PairEncoder]] = {}

    @classmethod
    def from_model(cls, model, tokenizer, layout: Layout, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                   max_length: int | None = None, source: str = "data") -> "RewardScorer":
        """A scorer around a model already in memory (a training worker's), left where it is.

        The same tokenization and forward batches as a scorer that loads its model; the
        caller puts the model in eval mode. Under ZeRO-3 every rank must score the same
        texts (the forward passes gather the parameters together).
        """
        import torch

        scorer = cls.__new__(cls)
        scorer._attach(model, tokenizer, layout, batch_tokens, max_length, source)
        scorer.device = next(model.parameters(), torch.empty(0)).device
        return scorer

    def __call__(self, table):
        import pyarrow as pa

        rows = table.to_pylist()
        self._check(rows)
        rewards, tokens, truncated = self.score_rows(rows)
        keep = table if self.keep_columns is None else table.select([c for c in self.keep_columns if c in table.column_names])
        for name in self.layout.reward_columns:
            keep = keep.append_column(name, pa.array(rewards[name], pa.float64()))
        if self.with_lengths:
            keep = keep.append_column(TOKENS_COLUMN, pa.array(tokens, pa.int64()))
            keep = keep.append_column(TRUNCATED_COLUMN, pa.array(truncated, pa.bool_()))
        return keep

    def _check(self, rows: list[dict[str, Any]]) -> None:
        for i, row in enumerate(rows):
            problem = row_problem(row, self.layout.fmt, self.layout.names)
            if problem:
                field_name, text = problem
                if self.layout.kind == "single":
                    text = text.replace("every chosen and rejected answer", "every answer").replace(
                        "every row needs a chosen and a rejected answer", "every row needs an answer")
                shown = repr(row)[:120]
                raise BadRowError(self.source, f"{i} of a batch, {shown}", field_name, text)

    def encode(self, rows: list[dict[str, Any]], layout: Layout | None = None) -> dict[str, "EncodedColumn"]:
        """Token ids of checked rows, one ``EncodedColumn`` per reward column.

        This is the one tokenization of every scoring path (``score``, ``evaluate``,
        the end of training, ``rayreward serve``): the prompt prepended or the chat
        template applied, EOS appended, texts over ``max_length`` cut by
        ``PairEncoder``'s rule.

        Args:
            rows: rows in ``layout`` (already checked with ``row_problem``).
            layout: how to read them; None is the scorer's own layout.
        """
        layout = layout or self.layout
        if layout not in self._encoders:
            self._encoders[layout] = (
                PairEncoder(self.tokenizer, layout.fmt, layout.names),
                PairEncoder(self.tokenizer, layout.fmt, layout.names, self.max_length, "truncate"),
            )
        whole, cutter = self._encoders[layout]
        sides = {}
        for col, name in zip(layout.answer_columns, layout.reward_columns):
            full = whole.encode_column(rows, col)
            long = [i for i, ids in enumerate(full) if self.max_length and len(ids) > self.max_length]
            cut = list(full)
            # Re-encoding the few long texts with the truncating encoder keeps one
            # truncation rule (formats.PairEncoder) and exact per-row flags.
            if long:
                for i, ids in zip(long, cutter.encode_column([rows[i] for i in long], col)):
                    cut[i] = ids
            sides[name] = EncodedColumn(full, cut, set(long))
        return sides

    def score_rows(self, rows: list[dict[str, Any]]) -> tuple[dict[str, list[float]], list[int], list[bool]]:
        """Rewards of checked rows, with each row's token count and truncation flag."""
        sides = self.encode(rows)
        seqs = [ids for side in sides.values() for ids in side.ids]
        values = self.rewards(seqs).tolist()
        rewards, n = {}, len(rows)
        for k, name in enumerate(sides):
            rewards[name] = values[k * n:(k + 1) * n]
        tokens = [max(len(side.full[i]) for side in sides.values()) for i in range(n)]
        truncated = [any(i in side.long for side in sides.values()) for i in range(n)]
        return rewards, tokens, truncated

    def rewards(self, seqs: list[list[int]]):
        """Rewards of token-id sequences, as a float64 numpy array (normalized if asked)."""
        import numpy as np
        import torch

        out = np.zeros(len(seqs), dtype=np.float64)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        pad = self.tokenizer.pad_token_id
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        start = 0
        while start < len(order):
            # Longest first: the first sequence sets the padded width of the batch.
            width = max(1, len(seqs[order[start]]))
            size = max(1, min(len(order) - start, self.batch_tokens // width))
            chunk = order[start:start + size]
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                s = seqs[i]
                span = slice(width - len(s), width) if left else slice(0, len(s))
                ids[row, span] = torch.as_tensor(s, dtype=torch.long)
                mask[row, span] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            out[chunk] = logits[:, 0].float().cpu().numpy()
            start += size
        return self.normalization.apply(out) if self.normalization is not None else out


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Model folders exported here from LoRA or ZeRO checkpoints, which only live for this process.
_EXPORTED: set[Path] = set()


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The loadable model folder behind what a user points at.

    Accepts a folder written by ``save_pretrained``, a training run folder (its
    exported ``model/``), a folder of checkpoints (the newest ``checkpoint-*`` or
    ``checkpoint_*``), or one checkpoint. A checkpoint holding a LoRA adapter or ZeRO
    shards is exported (``rayreward.core.checkpoint``) to a temporary folder first; on a
    multi-node cluster give a model folder on shared storage instead, which every
    actor can read.

    Raises:
        FileNotFoundError: nothing loadable was found there.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--model {path}: no such file or directory")
    if _is_plain_model(root):
        return root
    if (root / "adapter_config.json").is_file() or any(root.glob("global_step*")):
        import tempfile

        from rayreward.core.checkpoint import export_checkpoint

        target = Path(tempfile.mkdtemp(prefix="rayreward-model-")) / "model"
        logger.info("exporting checkpoint %s to %s", root, target)
        export_checkpoint(str(root), str(target))
        _EXPORTED.add(target)
        return target
    if _is_plain_model(root / "model"):
        return root / "model"
    checkpoints = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(("checkpoint-", "checkpoint_")))
    if checkpoints:
        return resolve_model_dir(checkpoints[-1])
    raise FileNotFoundError(
        f"--model {path}: found no model there (no config.json with weights in it or in model/, no LoRA adapter "
        "or ZeRO shards, no checkpoint-* folder); point it at a folder written by save_pretrained, a run "
        "folder or a checkpoint"
    )


def is_temporary_export(model_dir: Path) -> bool:
    """Whether ``resolve_model_dir`` exported this folder from a checkpoint (it is discarded later)."""
    return Path(model_dir) in _EXPORTED


def _is_plain_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)
