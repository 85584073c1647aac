"""The end of a sweep: the results table (console, CSV, markdown), the best trial's config
as a runnable YAML, its checkpoint and exported model, and the plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Callable

from rayreward.runtime import storage as _storage
from rayreward.config.tree import apply_overrides
from rayreward.job.config import JobConfig, job_from_dict, run_name, storage_uri

# The training run of a trial: its checkpoints are in <trial folder>/<TRIAL_RUN>.
TRIAL_RUN = "train"
STATUS = {"TERMINATED": "finished", "ERROR": "error", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}


def trial_rows(grid, trials: dict, keys: list[str], metric: str, mode: str, storage: str) -> list[dict]:
    """One row per trial: its sampled values, best and last reported metric, checkpoint, status.

    ``trials`` maps trial ids to Tune's ``Trial`` objects (their status and config: a
    trial that never reported has no config in its ``Result``).

    ``status`` is ``finished``, ``stopped early`` (ended before its planned last step:
    ASHA stopped it), ``error``, or ``pending``/``running``/``paused`` for an interrupted
    sweep. ``best_checkpoint`` is the checkpoint of its best report that is still in
    storage (``storage.num_to_keep`` may have deleted others).
    """
    sign = 1 if mode == "max" else -1
    rows = []
    for result in grid:
        trial_id = os.path.basename(result.path.rstrip("/")).removeprefix("trial_")
        history = _history(result.metrics_dataframe, metric, storage)
        _find_checkpoints(history, _uri(result.path, storage))
        kept = [h for h in history if h["value"] is not None and h["checkpoint"] and _storage.is_dir(h["checkpoint"])]
        best = max(kept, key=lambda h: sign * h["value"]) if kept else None
        last_step = history[-1]["step"] if history else None
        plan = _read_json(_storage.join(_uri(result.path, storage), "plan.json"))
        trial = trials[trial_id]
        status = STATUS.get(trial.status, trial.status.lower())
        planned = plan.get("max_steps")
        if status == "finished" and planned and last_step is not None and last_step < planned:
            status = "stopped early"
        rows.append({
            "trial": trial_id,
            "status": status,
            "params": {k: trial.config.get(k) for k in keys},
            metric: best["value"] if best else None,
            "best_step": best["step"] if best else None,
            "last_step": last_step,
            "max_steps": planned,
            "best_checkpoint": best["checkpoint"] if best else None,
            "history": [(h["step"], h["value"]) for h in history if h["value"] is not None],
            "path": _uri(result.path, storage),
        })
    return rows


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The trial with the best reported metric among those with a checkpoint left."""
    sign = 1 if mode == "max" else -1
    scored = [r for r in rows if r[metric] is not None and r["best_checkpoint"]]
    return max(scored, key=lambda r: sign * r[metric]) if scored else None


def write_report(job: JobConfig, base: dict, rows: list[dict], run_dir: str, keys: list[str],
                 print_fn: Callable[[str], None]) -> tuple[dict | None, dict[str, str]]:
    """Prints and writes the results table, then the best trial's config, plot and model."""
    from rayreward.run.final_eval import export_where_a_worker_runs

    metric, mode = job.tune.metric, job.tune.mode
    files = {name: _storage.join(run_dir, f) for name, f in (
        ("results_csv", "results.csv"), ("results_md", "results.md"), ("plot", "sweep.png"),
        ("best_config", "best_config.yaml"), ("model_dir", "best_model"), ("summary", "summary.json"))}
    best = best_row(rows, metric, mode)

    # 1. Results table.
    header, table = _table(rows, keys, metric)
    print_fn("[rayreward] results (" + f"{metric}: best report of each trial, {mode} is better):")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in [header, *table]:
        print_fn("  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    out = io.StringIO()
    csv.writer(out).writerows([header, *table])
    _storage.write_text(files["results_csv"], out.getvalue())
    _storage.write_text(files["results_md"], "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(str(c) for c in line) + " |" for line in table]) + "\n")

    # 2. Plot: the metric against each swept value, and over steps.
    _storage.write_bytes(files["plot"], _plot(rows, keys, job.tune.search_space, metric, best))
    if best is None:
        print_fn(f"[rayreward] no trial reported {metric} with a checkpoint: no best config or model")
        files = {k: v for k, v in files.items() if k in ("results_csv", "results_md", "plot")}
        return None, files

    # 3. The best trial's config, runnable as it is by `rayreward train`.
    config = apply_overrides(base, {**best["params"], "storage.name": f"{run_name(job)}-best"})
    job_from_dict(config)
    import yaml

    _storage.write_text(files["best_config"], (
        f"# The best trial ({best['trial']}) of the sweep {run_name(job)}: {metric} {best[metric]:.4f} at step "
        f"{best['best_step']}.\n# Its checkpoint: {best['best_checkpoint']}\n"
        f"# Swept values: {', '.join(f'{k}={_cell(v)}' for k, v in best['params'].items())}\n"
        f"#   rayreward train --config {files['best_config']}\n"
    ) + yaml.safe_dump(config, sort_keys=False))

    # 4. The best checkpoint, exported as a Hugging Face model.
    export_where_a_worker_runs(best["best_checkpoint"], files["model_dir"], job.scaling)
    summary = {"metric": metric, "mode": mode, "best_trial": best["trial"], "best_value": best[metric],
               "best_step": best["best_step"], "best_params": best["params"],
               "best_checkpoint": best["best_checkpoint"], "storage": storage_uri(job),
               "trials": [{k: v for k, v in r.items() if k != "history"} for r in rows], **files}
    if job.tune.ensemble_top_k:
        files["ensemble"] = _storage.join(run_dir, "ensemble")
        summary["ensemble"] = export_ensemble(rows, metric, mode, job.tune.ensemble_top_k, files["ensemble"],
                                              scaling=job.scaling)
    _storage.write_text(files["summary"], json.dumps(summary, indent=1, default=str) + "\n")
    if "ensemble" in files:
        print_fn(f"[rayreward] {'ensemble:':13s}{files['ensemble']} ({len(summary['ensemble'])} trials; "
                 f"rayreward serve --model {files['ensemble']})")
    print_fn(f"[rayreward] best trial {best['trial']}: {metric} {best[metric]:.4f} at step {best['best_step']} "
             f"with {', '.join(f'{k}={_cell(v)}' for k, v in best['params'].items())}")
    for label, key in (("best config", "best_config"), ("model", "model_dir"), ("plot", "plot"),
                       ("results", "results_csv")):
        print_fn(f"[rayreward] {label + ':':13s}{files[key]}")
    print_fn(f"[rayreward] {'checkpoint:':13s}{best['best_checkpoint']}")
    return best, files


def export_ensemble(rows: list[dict], metric: str, mode: str, k: int, dest: str, scaling=None) -> list[str]:
    """Exports the best ``k`` trials' best checkpoints as an ensemble folder.

    Each becomes a Hugging Face model folder ``dest/member-<rank>-<trial>``, and
    ``dest/ensemble.json`` lists them (``rayreward.evaluation.ensemble``), so
    ``rayreward serve --model dest`` serves their mean, std and conservative reward.
    With ``scaling`` (the sweep's ``ScalingSection``) each export runs in a Ray task sized
    like a trial's worker (``rayreward.run.final_eval.export_where_a_worker_runs``), not here.

    Returns:
        The trial ids exported, best first (fewer than ``k`` when fewer trials have a
        checkpoint).
    """
    from rayreward.core.checkpoint import export_checkpoint
    from rayreward.evaluation.ensemble import MANIFEST, manifest_text
    from rayreward.run.final_eval import export_where_a_worker_runs

    sign = 1 if mode == "max" else -1
    ranked = sorted((r for r in rows if r[metric] is not None and r["best_checkpoint"]),
                    key=lambda r: -sign * r[metric])[:k]
    names = [f"member-{rank}-{r['trial']}" for rank, r in enumerate(ranked)]
    for name, row in zip(names, ranked):
        if scaling is None:
            export_checkpoint(row["best_checkpoint"], _storage.join(dest, name))
        else:
            export_where_a_worker_runs(row["best_checkpoint"], _storage.join(dest, name), scaling)
    source = f"top {len(ranked)} trials by {metric} ({mode})"
    _storage.write_text(_storage.join(dest, MANIFEST), manifest_text(names, source, [r[metric] for r in ranked]))
    return [r["trial"] for r in ranked]


def _table(rows: list[dict], keys: list[str], metric: str) -> tuple[list[str], list[list]]:
    header = ["trial", "status", *keys, metric, "best_step", "last_step", "checkpoint"]
    table = [[r["trial"], r["status"], *(_cell(r["params"][k]) for k in keys), _cell(r[metric]),
              _cell(r["best_step"]), _cell(r["last_step"]), os.path.basename(r["best_checkpoint"] or "") or "-"]
             for r in rows]
    return header, table


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _history(df, metric: str, storage: str) -> list[dict]:
    if df is None or df.empty or "step" not in df:
        return []
    out = []
    for _, row in df.iterrows():
        value = row.get(metric)
        value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        checkpoint = row.get("checkpoint_path")
        out.append({"step": int(row["step"]), "value": value,
                    "checkpoint": _uri(checkpoint, storage) if isinstance(checkpoint, str) else None})
    return out


def _find_checkpoints(history: list[dict], trial_path: str) -> None:
    """Fills in the checkpoint of a report that came without its path, where the trial's
    run holds one at that step.

    A trial interrupted just after its run saved the last checkpoint, but before Tune
    had the report, resumes with nothing left to train: its run reports that step's
    metrics again, without a new checkpoint. The one it resumed from is the step's.
    """
    from rayreward.run.callbacks import checkpoint_name

    for h in history:
        if h["checkpoint"] is None:
            folder = _storage.join(trial_path, TRIAL_RUN, checkpoint_name(h["step"]))
            if _storage.is_dir(folder):
                h["checkpoint"] = folder


def _uri(path: str, storage: str) -> str:
    """A path Ray reports inside a filesystem, as a URI when the storage is one."""
    if not _storage.is_uri(storage) or "://" in path:
        return path
    return storage.split("://", 1)[0] + "://" + path.lstrip("/")


def _read_json(path: str) -> dict:
    try:
        return json.loads(_storage.read_bytes(path))
    except (OSError, ValueError):
        return {}


def _plot(rows: list[dict], keys: list[str], space: dict, metric: str, best: dict | None) -> bytes:
    """PNG: one panel per swept key (each trial's best metric against its value), and the
    metric over training steps for every trial (dashed: stopped early)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(keys) + 1
    cols = min(panels, 2)
    fig, axes = plt.subplots(math.ceil(panels / cols), cols, figsize=(5.5 * cols, 3.8 * math.ceil(panels / cols)),
                             squeeze=False)
    flat = list(axes.flat)
    colors = {"finished": "tab:blue", "stopped early": "tab:orange", "error": "tab:red"}
    scored = [r for r in rows if r[metric] is not None]
    for ax, key in zip(flat, keys):
        (kind, _), = space[key].items()
        values = [r["params"][key] for r in scored]
        if kind in ("choice", "grid") and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in values):
            labels = sorted({_cell(v) for v in values})
            xs = [labels.index(_cell(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        else:
            xs = values
            positive = [v for v in values if v > 0]
            if kind == "loguniform" or (len(positive) == len(values) > 1 and max(values) >= 100 * min(values)):
                ax.set_xscale("log")
        for x, r in zip(xs, scored):
            ax.scatter([x], [r[metric]], color=colors.get(r["status"], "gray"), s=60 if r is best else 30,
                       edgecolors="black" if r is best else "none", zorder=3)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    ax = flat[len(keys)]
    for r in rows:
        if r["history"]:
            steps, values = zip(*r["history"])
            ax.plot(steps, values, marker="o", markersize=3, linestyle="--" if r["status"] == "stopped early" else "-",
                    label=f"{r['trial']} ({r['status']})", linewidth=2.5 if r is best else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over training (dashed: stopped early)", fontsize=10)
    ax.grid(alpha=0.3)
    if any(r["history"] for r in rows):
        ax.legend(fontsize=7)
    for extra in flat[panels:]:
        extra.set_visible(False)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in colors.items()]
    flat[0].legend(handles=handles, fontsize=7, title="status (ringed: best)", title_fontsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
