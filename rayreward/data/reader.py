"""Reading preference rows from files, checking each one where it is read.

Every row is read with its file and row number (1-based; in JSON Lines files, the line
number) and checked with ``formats.row_problem`` inside the read task, so a bad row is
reported with its exact place even though the data set is read in parallel. Rows are
mapped onto fixed internal columns (``chosen``, ``rejected``, optional ``prompt`` and
``margin``, or the four pre-tokenized ones) with a fixed Arrow type, so a wrong type in
one row becomes a counted bad row instead of a schema clash between blocks.

The same row iterator serves the driver's probe (a few rows, no Ray) and Ray's read
tasks (``PairDatasource``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

from rayreward.data.formats import (
    LEGACY_TOKEN_IDS_COLUMNS,
    PRETOKENIZED_COLUMNS,
    TOKEN_IDS_COLUMNS,
    BadRowError,
    ColumnNames,
    DataFormatError,
    detect_format,
    row_problem,
    token_ids_column,
)
from rayreward.data.groups import (
    GROUP_FORMATS,
    RANKING,
    RESPONSE,
    RESPONSES,
    SCORES,
    check_attribute_columns,
    detect_group_format,
    group_row_problem,
)
from rayreward.data.sources import DataSourceError, Source

META_COLUMNS = ("_source", "_row", "_field", "_problem")
_BLOCK_ROWS = 1024
_TABULAR_BATCH = 1024


@dataclass(frozen=True)
class ReadSpec:
    """How to read one source: its format and the columns every row must have."""

    source: Source
    fmt: str
    names: ColumnNames
    has_prompt: bool
    has_margin: bool
    part: str | None = None  # "train" / "eval" of a hashed split, or None for all rows
    eval_split: float = 0.0
    seed: int = 0
    attributes: tuple[str, ...] | None = None  # the rated attributes (ratings only)

    @property
    def is_group(self) -> bool:
        """Ranked groups or ratings: rows travel to the tokenizers as one JSON text (``_group``)."""
        return self.fmt in GROUP_FORMATS

    def group_source_columns(self) -> list[str]:
        """The user's columns a group row is made of."""
        n = self.names
        if self.fmt == "ranked":
            return [n.prompt, RESPONSES, RANKING, SCORES]
        if self.fmt == "ranked_lists":
            return [n.prompt, n.chosen, n.rejected]
        return [n.prompt, RESPONSE, *(self.attributes or ())]

    @property
    def data_columns(self) -> tuple[str, ...]:
        if self.is_group:
            return ("_group",)
        if self.fmt == "pretokenized":
            cols = PRETOKENIZED_COLUMNS
        elif self.fmt == "token_ids":
            cols = tuple(TOKEN_IDS_COLUMNS.values())
        else:
            cols = ("chosen", "rejected")
            if self.has_prompt:
                cols += ("prompt",)
        return cols + (("margin",) if self.has_margin else ())

    def source_columns(self) -> dict[str, str]:
        """Internal column -> the column of the user's data."""
        if self.is_group:
            return {c: c for c in self.group_source_columns()}
        n = self.names
        mapping = {c: c for c in (*PRETOKENIZED_COLUMNS, *TOKEN_IDS_COLUMNS.values())}
        mapping.update({"chosen": n.chosen, "rejected": n.rejected, "prompt": n.prompt})
        mapping["margin"] = n.margin
        return {c: mapping[c] for c in self.data_columns}

    def arrow_schema(self):
        import pyarrow as pa

        message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        types = {
            "chosen": message if self.fmt == "conversational" else pa.string(),
            "rejected": message if self.fmt == "conversational" else pa.string(),
            "prompt": message if self.fmt == "conversational" else pa.string(),
            "margin": pa.float64(),
            **{c: pa.list_(pa.int64()) for c in (*PRETOKENIZED_COLUMNS, *TOKEN_IDS_COLUMNS.values())},
        }
        types["_group"] = pa.string()
        meta = [("_source", pa.string()), ("_row", pa.int64()), ("_field", pa.string()), ("_problem", pa.string())]
        return pa.schema([(c, types[c]) for c in self.data_columns] + meta)

    def in_part(self, path: str, row: int) -> bool:
        """Whether row ``row`` of ``path`` belongs to this plan's part of a hashed split."""
        if self.part is None or not self.eval_split:
            return self.part != "eval"
        key = f"{self.seed}\0{self.source.relative(path)}\0{row}".encode()
        draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
        return (draw < self.eval_split) == (self.part == "eval")


def iter_raw_rows(source: Source, path: str, columns: list[str] | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """Yields ``(row_number, row, problem)`` for one file; ``problem`` is set when the row
    could not be parsed (``row`` is then None).

    Raises:
        DataSourceError: the file as a whole cannot be read.
    """
    fs, kind = source.filesystem, source.kind
    where = source.display(path)
    try:
        if kind in ("jsonl", "json"):
            yield from _json_rows(fs, path, kind, where)
        elif kind == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                cols = [c for c in (columns or pf.schema_arrow.names) if c in pf.schema_arrow.names]
                yield from _batch_rows(pf.iter_batches(batch_size=_TABULAR_BATCH, columns=cols))
        elif kind == "csv":
            import pyarrow as pa
            from pyarrow import csv

            # Text columns stay text even when a value looks like a number.
            text = {c: pa.string() for c in (columns or []) if c != "margin"}
            with fs.open_input_stream(path, compression="detect") as f:
                reader = csv.open_csv(f, convert_options=csv.ConvertOptions(column_types=text))
                yield from _batch_rows(reader)
        elif kind == "arrow":
            import pyarrow as pa

            with fs.open_input_file(path) as f:
                try:
                    reader = pa.ipc.open_stream(f)
                except pa.ArrowInvalid:
                    f.seek(0)
                    file_reader = pa.ipc.open_file(f)
                    reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
                yield from _batch_rows(reader)
        else:  # pragma: no cover - resolve_source admits only the kinds above
            raise DataSourceError(f"{where}: unsupported file kind {kind!r}")
    except DataSourceError:
        raise
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"{where}: cannot read this {kind} file: {exc}") from None


def _batch_rows(batches) -> Iterator[tuple[int, Any, str | None]]:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield n, row, None


def _json_rows(fs, path: str, kind: str, where: str) -> Iterator[tuple[int, Any, str | None]]:
    with fs.open_input_stream(path, compression="detect") as f:
        lines = _lines(f)
        first = next(lines, None)
        if first is None:
            return
        if kind == "json" and first[1].lstrip().startswith(b"["):
            # A JSON array: read whole (a file of this kind cannot be streamed by line).
            text = b"\n".join([first[1]] + [line for _, line in lines])
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataSourceError(
                    f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the file, "
                    "or write one JSON object per line (.jsonl)"
                ) from None
            for i, row in enumerate(rows, 1):
                yield (i, row, None) if isinstance(row, dict) else (i, None, _not_object(row))
            return
        for number, line in _chain(first, lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                yield number, None, f"broken JSON line ({detail}); fix or remove this line"
                continue
            yield (number, row, None) if isinstance(row, dict) else (number, None, _not_object(row))


def _not_object(value: Any) -> str:
    return f"expected a JSON object with the pair's fields, got {type(value).__name__}"


def _chain(first, rest):
    yield first
    yield from rest


def _lines(f) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a pyarrow stream, which has no readline."""
    number, tail = 0, b""
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            number += 1
            yield number, part
    if tail:
        yield number + 1, tail


def canonical_row(plan: ReadSpec, raw: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Checks a raw row; returns it under the internal column names, and its problem."""
    if plan.is_group:
        return _group_row(plan, raw)
    mapping = plan.source_columns()
    # A margin is checked wherever it appears (as the trainer does), but carried only
    # when the data set's first row has one: a column is the data set's, not a row's.
    legacy = LEGACY_TOKEN_IDS_COLUMNS.values() if plan.fmt == "token_ids" else ()
    checked = {c: raw[c] for c in (*mapping.values(), *legacy, plan.names.margin) if c in raw}
    margin = checked.get(plan.names.margin)
    if plan.source.kind == "csv" and isinstance(margin, str):
        # CSV has no types: one non-number in the column makes every margin text, so
        # each is read as a number here and only the row that is not one is blamed.
        try:
            checked[plan.names.margin] = raw[plan.names.margin] = float(margin)
        except ValueError:
            pass
    problem = row_problem(checked, plan.fmt, plan.names)
    if problem:
        return {}, problem
    if plan.fmt == "token_ids":
        # chosen_ids/rejected_ids, or TRL's legacy chosen_input_ids/rejected_input_ids
        mapping = {**mapping, **{TOKEN_IDS_COLUMNS[side]: token_ids_column(raw, side) for side in TOKEN_IDS_COLUMNS}}
    for col in mapping.values():
        if col not in raw:
            return {}, (col, f"missing; the data set's first row has '{col}', so every row needs it")
    row = {internal: raw[col] for internal, col in mapping.items()}
    if plan.fmt == "conversational":
        for c in ("chosen", "rejected", "prompt"):
            if c in row:
                row[c] = [{"role": m["role"], "content": m["content"]} for m in (row[c] or [])]
    if "margin" in row:
        row["margin"] = float(row["margin"])
    return row, None


def _group_row(plan: ReadSpec, raw: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """A group row checked, as one JSON text: its shape varies (texts or messages, K per row)."""
    from rayreward.data.formats import _plain

    row = {c: _plain(raw[c]) for c in plan.group_source_columns() if c in raw}
    if plan.source.kind == "csv":
        # CSV has no types and no nulls: attribute columns arrive as text, "" meaning not rated.
        for name in plan.attributes or ():
            value = row.get(name)
            if isinstance(value, str):
                try:
                    row[name] = None if not value.strip() else float(value)
                except ValueError:
                    pass
    problem = group_row_problem(row, plan.fmt, plan.names, plan.attributes)
    if problem:
        return {}, problem
    return {"_group": json.dumps(row)}, None


def read_rows(plan: ReadSpec, path: str) -> Iterator[dict[str, Any]]:
    """Checked rows of one file in this plan's part, with their place (``_source``, ``_row``)
    and, for a bad row, ``_field`` and ``_problem`` (its data columns are then None)."""
    where = plan.source.display(path)
    wanted = list(plan.source_columns().values())
    if plan.fmt == "token_ids":  # TRL's legacy names are read too (with a FutureWarning at detection)
        wanted += list(LEGACY_TOKEN_IDS_COLUMNS.values())
    for number, raw, problem in iter_raw_rows(plan.source, path, wanted):
        if not plan.in_part(path, number):
            continue
        field = None
        if problem is None:
            row, found = canonical_row(plan, raw)
            if found:
                field, problem = found
        if problem is not None:
            row = dict.fromkeys(plan.data_columns)
        yield {**row, "_source": where, "_row": number, "_field": field, "_problem": problem}


def _read_task(plan: ReadSpec, paths: tuple[str, ...]):
    import pyarrow as pa

    schema = plan.arrow_schema()
    rows: list[dict[str, Any]] = []
    for path in paths:
        for row in read_rows(plan, path):
            rows.append(row)
            if len(rows) == _BLOCK_ROWS:
                yield pa.Table.from_pylist(rows, schema=schema)
                rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


def pair_datasource(plan: ReadSpec):
    """A Ray ``Datasource`` reading the plan's files, one read task per group of files."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class PairDatasource(Datasource):
        def get_name(self) -> str:
            return "ReadPreferencePairs"

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(plan.source.sizes) or None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            files = sorted(zip(plan.source.sizes, plan.source.files), reverse=True)
            groups: list[list[tuple[int, str]]] = [[] for _ in range(max(1, min(parallelism, len(files))))]
            for item in files:  # largest first onto the lightest group
                min(groups, key=lambda g: sum(s for s, _ in g)).append(item)
            tasks = []
            for group in groups:
                paths = tuple(sorted(p for _, p in group))
                meta = BlockMetadata(
                    num_rows=None, size_bytes=sum(s for s, _ in group) or None, exec_stats=None, input_files=paths
                )
                tasks.append(ReadTask(partial(_read_task, plan, paths), meta, schema=plan.arrow_schema()))
            return tasks

    return PairDatasource()


def probe(source: Source, fmt: str, names: ColumnNames, on_bad_rows: str, n_rows: int = 16,
          attributes: tuple[str, ...] | None = None) -> tuple[str, bool, bool, list[dict]]:
    """Reads the first rows of the first file on the driver (no Ray) to fix the format.

    Returns:
        ``(format, has_prompt, has_margin, sample_rows)``; ``sample_rows`` are the good
        ones among the first ``n_rows``, under the internal column names.

    Raises:
        DataSourceError: the first file cannot be read or is empty.
        DataFormatError: the columns fit no format.
        BadRowError: one of the first rows is bad and ``on_bad_rows`` is ``error``.
    """
    path = source.files[0]
    where = source.display(path)
    raws = []
    for number, raw, problem in iter_raw_rows(source, path):
        if problem is not None:
            if on_bad_rows == "error":
                raise BadRowError(where, number, None, problem)
            continue
        raws.append((number, raw))
        if len(raws) >= n_rows:
            break
    if not raws:
        raise DataSourceError(f"{where}: no readable row in the first file of {source.field}; is the file empty?")
    first = raws[0][1]
    detected = detect_group_format(first.keys(), first, names) or detect_format(first.keys(), first, names, source=where)
    if fmt == "auto":
        fmt = detected
    elif fmt in GROUP_FORMATS:
        if detected != fmt:
            raise DataFormatError(f"{where}: format {fmt!r} does not fit the columns {sorted(first)} "
                                  f"(they look like {detected!r})")
    elif fmt != "pretokenized" and any(c not in first for c in (names.chosen, names.rejected)):
        raise DataFormatError(f"{where}: format {fmt!r} needs columns '{names.chosen}' and '{names.rejected}'")
    has_prompt = fmt in ("explicit_prompt", "conversational") and names.prompt in first
    has_margin = names.margin in first and fmt not in GROUP_FORMATS
    if fmt == "pretokenized" and any(c not in first for c in PRETOKENIZED_COLUMNS):
        raise DataFormatError(f"{where}: format 'pretokenized' needs all of {', '.join(PRETOKENIZED_COLUMNS)}")
    if fmt == "ratings":
        check_attribute_columns(first.keys(), attributes, where)
    plan = ReadSpec(source, fmt, names, has_prompt, has_margin, attributes=attributes)
    samples = []
    for number, raw in raws:
        row, problem = canonical_row(plan, raw)
        if problem is None:
            samples.append(row)
        elif on_bad_rows == "error":
            raise BadRowError(where, number, *problem)
    return fmt, has_prompt, has_margin, samples
