"""The checks of ``evaluate``, ``score`` and ``export``: the model and every row of the data."""

from __future__ import annotations

import json
import os

from rayreward.checks.findings import Findings
from rayreward.checks.job import FULL_PASS_BYTES, _full_pass, check_pairs
from rayreward.checks.models import check_model, check_model_ref
from rayreward.checks.storage import STORE_TIMEOUT_S, _store_answers, check_storage


def check_scoring(model: str, data: str, pairs_only: bool, text_column: str | None = None,
                  prompt_column: str = "prompt", revision: str | None = None) -> Findings:
    """``evaluate`` (``pairs_only``) and ``score``: the model (folder, adapter, hub id or
    object-store URI: ``evaluation.model_ref.model_problems``) and every row of the data."""
    from rayreward.data.config import ColumnsConfig, DataConfig
    from rayreward.data.formats import DataFormatError
    from rayreward.data.reader import ReadSpec, iter_raw_rows
    from rayreward.data.sources import DataSourceError, resolve_source
    from rayreward.evaluation.scorer import detect_layout

    found = Findings()
    found.problems += check_model_ref(str(model), revision, "--model")
    try:
        source = resolve_source(str(data), field="--data", role="eval")
        first = next(((n, r) for n, r, p in iter_raw_rows(source, source.files[0]) if p is None), None)
        if first is None:
            raise DataSourceError(f"--data: {source.display(source.files[0])}: no readable row; is the file empty?")
        layout = detect_layout(list(first[1]), first[1], text_column, prompt_column,
                               source=source.display(source.files[0]))
    except (DataSourceError, DataFormatError) as exc:
        found.problems.append(str(exc) if str(exc).startswith("--data") else f"--data: {exc}")
        return found
    rated = layout.kind == "single" and _rates_columns(model, first[1])
    if pairs_only and layout.kind == "single" and not rated:
        found.problems.append(f"--data: got columns {sorted(first[1])} in {source.display(source.files[0])}; "
                              "expected preference pairs ('chosen' and 'rejected'); to score single answers use "
                              "`rayreward score`")
        return found
    if layout.kind == "pairs":
        cfg = DataConfig(train=str(data), columns=ColumnsConfig(prompt=prompt_column))
        check_pairs(str(data), "--data", cfg, found, full_pass=True)
    elif layout.kind == "groups" and source.filesystem.type_name == "local" and sum(source.sizes) <= FULL_PASS_BYTES:
        _full_pass(ReadSpec(source, layout.fmt, layout.names, False, False), "--data", "error", None, None, found)
    elif source.filesystem.type_name == "local" and sum(source.sizes) <= FULL_PASS_BYTES:
        names = layout.names
        plan = ReadSpec(source, layout.fmt, names, layout.fmt != "implicit_prompt" and names.prompt in first[1], False)
        _full_pass(plan, "--data", "error", None, None, found)
    return found


def _rates_columns(model: str, first_row) -> bool:
    """Whether ``model`` is a multi-attribute model whose attributes are all columns of the data (ratings)."""
    try:
        with open(os.path.join(os.path.expanduser(str(model)), "config.json"), encoding="utf-8") as f:
            names = json.load(f).get("rayreward_attributes") or []
    except (OSError, ValueError):
        return False
    return bool(names) and all(n in first_row for n in names)


def check_export(checkpoint: str, out: str, base_model: str | None) -> Findings:
    """``export``: the checkpoint is there, the output can be written, the base model exists."""
    from rayreward.runtime.storage import is_uri

    found = Findings()
    if is_uri(checkpoint):
        found.problems += _store_answers(checkpoint, "checkpoint", STORE_TIMEOUT_S)
    elif not os.path.isdir(checkpoint):
        found.problems.append(f"checkpoint: got {checkpoint!r}; no such folder (expected a checkpoint-NNNNNN folder "
                              "of a run)")
    found.problems += check_storage(out, "out")
    if base_model:
        found.problems += check_model(base_model, False, "--base-model")
    return found
