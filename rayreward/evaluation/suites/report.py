"""A suite's outputs: ``<suite>.json``, ``<suite>_rewards.parquet``, ``<suite>.png`` and
the console table (one row per model, one column per section, the overall score last)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from rayreward.evaluation.suites import get_suite
from rayreward.evaluation.suites.runner import ModelRun, SuiteResults

OVERALL = "Overall"


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """Short names for tables and charts: the folder name (a run's ``model/`` by its run),
    or the whole path when two models would share a name."""
    def short(m: str) -> str:
        path = os.path.normpath(m)
        base = os.path.basename(path) or m
        return f"{os.path.basename(os.path.dirname(path))}/{base}" if base == "model" else base

    names = {m: short(m) for m in models}
    taken = list(names.values())
    return {m: (name if taken.count(name) == 1 else m) for m, name in names.items()}


def _clean(value: Any) -> Any:
    """JSON without NaN (None instead) and with plain Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_suite(res: SuiteResults, runs: Sequence[ModelRun], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes one suite's JSON, parquet and bar chart into ``out_dir``.

    Returns:
        The paths written, by kind (``json``, ``parquet``, ``png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = res.data.name
    suite = get_suite(name)
    labels = model_labels(list(res.scores))
    by_model = {r.model: r for r in runs}
    models = {}
    for model, scores in res.scores.items():
        run = by_model.get(model)
        entry = {"label": labels[model], **{k: v for k, v in scores.items() if k != "per_row"}}
        if run is not None:
            entry.update(model_dirs=run.model_dirs, rendering=run.rendering, truncated_completions=run.truncated)
        models[model] = entry
    doc = {"suite": name, "rules": suite.RULES, "data": res.data.where, "rows": len(res.data.rows),
           "schema": suite.SCHEMA, "models": models}
    paths = {"json": out / f"{name}.json", "parquet": out / f"{name}_rewards.parquet", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(_clean(doc), indent=2) + "\n", encoding="utf-8")
    _write_rewards(res, paths["parquet"])
    _bar_chart(res, labels, paths["png"])
    return paths


def _write_rewards(res: SuiteResults, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name, rows = res.data.name, res.data.rows
    group = "domain" if name == "rm-bench" else "subset"
    scalar = name == "rewardbench"
    cols: dict[str, list] = {"model": [], "row": [], "id": [], group: [], "reward_chosen": [],
                             "reward_rejected": [], "credit": []}
    for model, rewards in res.rewards.items():
        credits = res.scores[model]["per_row"]
        for i, (row, values) in enumerate(zip(rows, rewards)):
            n = 1 if scalar else len(row["chosen"])
            cols["model"].append(model)
            cols["row"].append(i)
            cols["id"].append(None if row.get("id") is None else str(row["id"]))
            cols[group].append(row[group])
            cols["reward_chosen"].append(values[0] if scalar else values[:n])
            cols["reward_rejected"].append(values[1] if scalar else values[n:])
            cols["credit"].append(credits[i])
    reward_type = pa.float64() if scalar else pa.list_(pa.float64())
    schema = pa.schema([("model", pa.string()), ("row", pa.int64()), ("id", pa.string()), (group, pa.string()),
                        ("reward_chosen", reward_type), ("reward_rejected", reward_type), ("credit", pa.float64())])
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp)
    os.replace(tmp, path)


def table_columns(name: str) -> list[str]:
    return [*get_suite(name).TABLE_COLUMNS, OVERALL]


def _value(scores: dict[str, Any], column: str) -> float:
    if column == OVERALL:
        return scores["overall"]
    section = scores["sections"].get(column)
    return math.nan if section is None else section["score"]


def format_table(res: SuiteResults) -> str:
    """The console table of one suite: scores in percent, one row per model."""
    labels = model_labels(list(res.scores))
    columns = table_columns(res.data.name)
    header = ["model", *columns, "NaN"]
    lines = [header]
    for model, scores in res.scores.items():
        cells = [labels[model]]
        for c in columns:
            v = _value(scores, c)
            cells.append("-" if math.isnan(v) else f"{100 * v:.1f}")
        cells.append(str(scores["nan_rewards"]))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    return "\n".join(text)


def _bar_chart(res: SuiteResults, labels: dict[str, str], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = table_columns(res.data.name)
    models = list(res.scores)
    fig = Figure(figsize=(max(6.0, 1.1 * len(columns) + 2), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    lowest = 0.0
    for k, model in enumerate(models):
        values = [100 * _value(res.scores[model], c) for c in columns]
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(columns))]
        ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width=width, label=labels[model])
        lowest = min([lowest, *(v for v in values if not math.isnan(v))])
    for i, c in enumerate(columns):
        if all(math.isnan(_value(res.scores[m], c)) for m in models):
            ax.text(i, 2, "no data", ha="center", va="bottom", fontsize="small", color="gray", rotation=90)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=20, ha="right")
    ax.set(ylabel="score (%)", ylim=(min(0.0, lowest - 5), 100), title=f"{res.data.name} ({len(res.data.rows)} rows)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
