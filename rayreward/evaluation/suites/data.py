"""Reading a suite's rows: a local file or folder, or the public data set by its hub id.

A local source is anything ``rayreward.data.resolve_source`` takes (jsonl, json,
parquet, csv, arrow files; a folder of them; a ``save_to_disk`` folder). A hub id is
loaded with ``datasets.load_dataset`` (from the local cache when offline). Every row is
checked against the suite's schema before any model is loaded or Ray starts.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from rayreward.data.formats import DataFormatError

MAX_LISTED = 5


def load_rows(suite: ModuleType, data: str | None, field: str = "--data") -> tuple[list[dict[str, Any]], str]:
    """Every row of a suite's data, checked.

    Args:
        suite: the suite module.
        data: a local source, or a hub id; None is the suite's public data set.
        field: how messages name the option.

    Returns:
        ``(rows, where)``: rows as dicts, and the source as shown to the user.

    Raises:
        DataSourceError: the source cannot be found or read (a hub id that is not
            cached and cannot be downloaded says to pass a local file).
        DataFormatError: rows do not fit the schema; the message lists the rows and
            fields and the schema expected.
    """
    spec = data or suite.HUB_ID
    if os.path.exists(os.path.expanduser(spec)) or not _looks_like_hub(spec):
        rows, where = _local_rows(spec, field)
    else:
        rows, where = _hub_rows(suite, spec, field), f"{spec} (split {suite.SPLIT})"
    check_rows(suite, rows, where)
    return rows, where


def _looks_like_hub(spec: str) -> bool:
    from rayreward.runtime.storage import is_uri

    parts = spec.split("/")
    return not is_uri(spec) and len(parts) == 2 and all(parts) and not spec.startswith((".", "~", "/")) \
        and os.path.splitext(spec)[1].lower() not in (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def _local_rows(spec: str, field: str) -> tuple[list[dict[str, Any]], str]:
    from rayreward.data.reader import iter_raw_rows
    from rayreward.data.sources import DataSourceError, resolve_source

    source = resolve_source(spec, field=field, role="eval")
    rows: list[dict[str, Any]] = []
    for path in source.files:
        for number, row, problem in iter_raw_rows(source, path):
            if problem is not None:
                raise DataSourceError(f"{field}: {source.display(path)} row {number}: {problem}")
            rows.append(dict(row))
    if not rows:
        raise DataSourceError(f"{field}: {spec}: no rows")
    return rows, spec


def _hub_rows(suite: ModuleType, spec: str, field: str) -> list[dict[str, Any]]:
    from rayreward.data.sources import DataSourceError

    schema = ", ".join(f"{k} ({v})" for k, v in suite.COLUMNS.items())
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(spec, split=suite.SPLIT)
    except Exception as exc:  # offline and not cached, no such data set, no such split
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataSourceError(
            f"{field}: cannot load the hub data set {spec!r} split {suite.SPLIT!r} ({reason}); offline, pass "
            f"{field} a local jsonl/json/parquet file or folder with the columns {schema}"
        ) from None
    return [dict(r) for r in ds]


def check_rows(suite: ModuleType, rows: list[dict[str, Any]], where: str) -> None:
    """Checks every row against the suite's schema; all problems are reported at once.

    Raises:
        DataFormatError: the first ``MAX_LISTED`` problems (row number, field, what was
            found) and how many more, with the columns expected.
    """
    problems = []
    for i, row in enumerate(rows):
        found = suite.row_problem(row)
        if found:
            problems.append(f"row {i}, field {found[0]!r}: {found[1]}")
    if not problems:
        problems = suite.table_problems(rows)
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        schema = ", ".join(f"{k} ({v})" for k, v in suite.COLUMNS.items())
        raise DataFormatError(f"{where}: not in the {suite.NAME} schema ({schema}): "
                              + "; ".join(problems[:MAX_LISTED]) + more)


def held_out_slice(suite: ModuleType, rows: list[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A fixed random slice of about ``n`` rows (all rows when ``n`` is 0 or covers them).

    RewardBench 2's Ties rows of one prompt (``ref:<k>`` and ``tied:<k>``) are kept or
    left together, since its formula compares them; the slice is in data order and the
    same for every call with the same seed.
    """
    import random

    if n <= 0 or n >= len(rows):
        return list(rows)
    units: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        key: Any = i
        if suite.NAME == "rewardbench2" and str(row.get("subset", "")).lower() == "ties":
            key = ("ties", str(row.get("id", "")).partition(":")[2])
        units.setdefault(key, []).append(i)
    order = list(units)
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for key in order:
        if len(chosen) >= n:
            break
        chosen += units[key]
    return [rows[i] for i in sorted(chosen)]
