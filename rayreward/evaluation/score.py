"""Batch inference with a reward model on Ray Data (``rayreward score``).

Steps: resolve the model -> read the data -> find its layout -> score with an actor
pool (one model per actor, forward batches bounded by tokens) -> write the input rows
with their rewards to one parquet or jsonl file, streamed from the driver.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rayreward.evaluation.model_ref import ModelRef, resolve_model
from rayreward.evaluation.scorer import (
    DEFAULT_BATCH_TOKENS,
    TOKENS_COLUMN,
    TRUNCATED_COLUMN,
    Layout,
    RewardScorer,
    detect_layout,
)

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".parquet", ".jsonl")


@dataclass
class ActorPool:
    """Resources of the scoring actors (one model each).

    Attributes:
        num_actors: actors in the pool.
        cpus_per_actor: CPUs per actor; torch uses as many threads.
        gpus_per_actor: GPUs per actor; None gives each actor one GPU when the cluster
            has GPUs, none otherwise.
        batch_rows: rows per Ray Data batch handed to an actor (the forward passes
            inside are cut by ``batch_tokens``).
    """

    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    batch_rows: int = 256


@dataclass
class ScoreResult:
    """What ``score`` wrote."""

    path: Path
    rows: int
    layout: Layout
    truncated: int


def read_source(source: str, field: str = "--data"):
    """A Ray Dataset of every row (all columns) of a source.

    The source is resolved by ``rayreward.data.resolve_source``: a file, folder, glob,
    ``datasets`` ``save_to_disk`` folder or object-store URI of jsonl/json/parquet/csv/
    arrow files.

    Raises:
        DataSourceError: nothing readable is there.
    """
    import ray.data

    from rayreward.data.sources import resolve_source

    src = resolve_source(str(source), field=field, role="eval")
    files = list(src.files)
    if src.kind in ("jsonl", "json"):
        return ray.data.read_json(files, filesystem=src.filesystem, file_extensions=None)
    if src.kind == "parquet":
        return ray.data.read_parquet(files, filesystem=src.filesystem, file_extensions=None)
    if src.kind == "csv":
        return ray.data.read_csv(files, filesystem=src.filesystem, file_extensions=None)
    # Arrow files of a save_to_disk folder: Ray Data has no reader for them, so they are
    # read here and handed over as tables.
    import pyarrow as pa

    tables = []
    for path in files:
        with src.filesystem.open_input_file(path) as f:
            try:
                tables.append(pa.ipc.open_stream(f).read_all())
            except pa.ArrowInvalid:
                f.seek(0)
                tables.append(pa.ipc.open_file(f).read_all())
    return ray.data.from_arrow(tables)


def read_with_layout(data: str, text_column: str | None = None, prompt_column: str | None = None):
    """Reads ``data`` and detects its layout from the first row.

    Returns:
        ``(dataset, column names, first row, Layout)``.

    Raises:
        DataFormatError: the source has no rows, or its columns fit no layout.
    """
    from rayreward.data.formats import DataFormatError

    ds = read_source(data)
    rows = ds.take(1)
    if not rows:
        raise DataFormatError(f"--data {data}: no rows")
    columns = list(ds.schema().names)
    layout = detect_layout(columns, rows[0], text_column, prompt_column, source=str(data))
    return ds, columns, rows[0], layout


def score_dataset(ds, model_dir, layout: Layout, pool: ActorPool = ActorPool(), **scorer_kwargs):
    """``ds`` with reward columns added, computed by a pool of ``RewardScorer`` actors.

    Args:
        ds: a Ray Dataset of rows in ``layout``.
        model_dir: the model: a ``model_ref.ModelRef`` or a local model folder.
        layout: from ``detect_layout``.
        pool: actor resources.
        **scorer_kwargs: passed to ``RewardScorer`` (``batch_tokens``, ``max_length``,
            ``normalize``, ``keep_columns``, ``with_lengths``, ``source``).
    """
    import ray
    from ray.data import ActorPoolStrategy

    gpus = pool.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    kwargs = dict(scorer_kwargs, num_threads=max(1, int(pool.cpus_per_actor)))
    return ds.map_batches(
        RewardScorer,
        fn_constructor_kwargs=dict(kwargs, model_dir=model_dir if isinstance(model_dir, ModelRef) else str(model_dir),
                                   layout=layout),
        batch_size=pool.batch_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=pool.num_actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=gpus,
        zero_copy_batch=True,
    )


@contextmanager
def scoring_session(address: str | None = None) -> Iterator[None]:
    """Ray for scoring (``rayreward.runtime.ray_session``: the running one, ``address`` or
    ``RAY_ADDRESS``, else an embedded one on loopback), with Ray Data keeping row order
    and a bad row's own error reaching the caller."""
    from rayreward.runtime.ray_session import ray_session

    with ray_session(address), _scoring_context():
        yield


@contextmanager
def _scoring_context() -> Iterator[None]:
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.raise_original_map_exception
    try:
        ctx.execution_options.preserve_order = True  # output rows follow input rows
        ctx.raise_original_map_exception = True  # a bad row reaches the driver as BadRowError
        try:
            yield
        except ray.exceptions.RayTaskError as exc:
            import pyarrow as pa

            from rayreward.data.sources import DataSourceError

            # The user's error (a bad row, a model without statistics) without Ray's frame.
            if isinstance(exc.cause, (json.JSONDecodeError, pa.ArrowInvalid)):
                raise DataSourceError(
                    f"cannot read the data: {exc.cause}. A JSON Lines file needs one JSON object per line, "
                    "and each column one type in every row (convert the file to parquet to check it)"
                ) from None
            if isinstance(exc.cause, ValueError):
                raise exc.cause from None
            raise
    finally:
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = saved


def write_rows(ds, out: str | os.PathLike, drop: tuple[str, ...] = ()) -> tuple[int, int]:
    """Streams ``ds`` into one parquet or jsonl file on the driver.

    Returns:
        ``(rows, truncated)``: rows written and how many had ``TRUNCATED_COLUMN`` set.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    writer, rows, truncated = None, 0, 0
    try:
        with open(tmp, "wb") as f:
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if TRUNCATED_COLUMN in table.column_names:
                    truncated += int(pa.compute.sum(table[TRUNCATED_COLUMN]).as_py() or 0)
                table = table.drop_columns([c for c in drop if c in table.column_names])
                rows += table.num_rows
                if out.suffix == ".parquet":
                    if writer is None:
                        writer = pq.ParquetWriter(f, table.schema)
                    writer.write_table(table.cast(writer.schema))
                else:
                    for row in table.to_pylist():
                        f.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
            if writer is not None:
                writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, truncated


def score(
    model: str | os.PathLike | ModelRef,
    data: str,
    out: str | os.PathLike,
    normalize: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    text_column: str | None = None,
    prompt_column: str = "prompt",
    pool: ActorPool = ActorPool(),
    revision: str | None = None,
) -> ScoreResult:
    """Scores every row of ``data`` and writes the rows with their rewards to ``out``.

    Pairs get ``reward_chosen`` and ``reward_rejected``; single answers (text,
    prompt + response, conversation) get ``reward``. Call inside a Ray session
    (``scoring_session``).

    Args:
        model: a model folder, run folder, checkpoint, PEFT adapter folder, hub id or
            object-store URI (``model_ref.resolve_model``).
        data: a jsonl/json/parquet/csv file, a directory of them or a glob.
        out: ``.parquet`` or ``.jsonl``; written atomically.
        normalize: report ``(reward - mean) / std`` with the model's stored statistics.
        batch_tokens: token budget of one forward pass.
        max_length: longer texts keep their last tokens; None: the model's limit.
        text_column: the answer column of single answers, when not detected.
        prompt_column: the prompt column.
        pool: actor resources.
        revision: the hub revision of a hub id.

    Raises:
        ValueError: ``out`` has another extension, or ``--normalize`` without stats.
        DataFormatError: the columns fit no layout.
        BadRowError: a row is malformed.

    Example:
        >>> with scoring_session():
        ...     score("runs/rm/model", "prompts.jsonl", "scored.parquet")
    """
    from rayreward.evaluation.normalization import load_normalization

    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out {out}: expected a .parquet or .jsonl file")
    ref = resolve_model(model, revision)
    if normalize and load_normalization(ref.path) is None:
        raise ValueError(f"--normalize: {ref.label} has no reward statistics in its config.json; "
                         "`rayreward train` stores them when the run has eval data, or write them with "
                         "`rayreward evaluate --save-normalization`")
    ds, columns, _, layout = read_with_layout(data, text_column, prompt_column)
    clash = [c for c in layout.reward_columns if c in columns]
    if clash:
        raise ValueError(f"--data {data}: already has column(s) {clash}; rename them first")
    scored = score_dataset(ds, ref, layout, pool, batch_tokens=batch_tokens, max_length=max_length,
                           normalize=normalize, with_lengths=True, source=str(data))
    rows, truncated = write_rows(scored, out, drop=(TOKENS_COLUMN, TRUNCATED_COLUMN))
    if truncated:
        logger.warning("%d of %d rows were longer than the model's limit and kept their last tokens", truncated, rows)
    return ScoreResult(out, rows, layout, truncated)
