"""The checks of a job (``train``, ``check``, ``tune``, and ``fit`` / ``run_sweep`` from Python).

Each data source resolves, is readable, has a format and the columns from its first rows
and a chat template where the format needs one; then a full pass over local files finds
broken lines, bad rows, margins that appear late, identical pairs and pre-tokenized ids
outside the vocabulary. The full pass runs on the driver with the same row reader and
checks as the training pipeline's read tasks (``rayreward.data.reader``), so ``train``,
``evaluate`` and ``score`` name a bad row the same way. Sources larger than
``FULL_PASS_BYTES`` (or in an object store) get only the first-rows check here; their read
tasks check every row before training starts. The model, its tokenizer settings and the
run's storage are checked too.
"""

from __future__ import annotations

import functools
from typing import Any

from rayreward.checks.findings import Findings
from rayreward.checks.models import check_model
from rayreward.checks.storage import check_storage

FULL_PASS_BYTES = 64 << 20  # about 6 s of one core (11 MB/s of JSON lines measured here)
_SHOWN = 5  # bad rows named per source; the rest are counted


def preflight_job(job, search_space: dict | None = None) -> Findings:
    """Everything about a job that can be known before Ray starts; ``check_job`` with the
    note on missing eval data. The command line and ``fit``/``run_sweep`` call this one.

    Args:
        job: a valid ``JobConfig``.
        search_space: a sweep's ``tune.search_space``: each swept ``train.loss_type``
            value is checked against the data's shape instead of the job's own.

    Returns:
        ``Findings``: problems (``raise_if_any``) and notes to print.
    """
    found = check_job(job, search_space=search_space)
    if not (job.data.eval or job.data.eval_split):
        found.notes.append("no eval data: accuracy will not be measured; set data.eval=FILE or data.eval_split=0.05 "
                           "to measure it")
    return found


def check_job(job, full_pass: bool = True, search_space: dict | None = None) -> Findings:
    """Data sources, model and storage of a built, valid ``JobConfig``.

    Args:
        job: from ``rayreward.job.config.load_job_config`` (already typed and range-checked).
        full_pass: also read every row of local sources up to ``FULL_PASS_BYTES``.
        search_space: a sweep's ``tune.search_space``; its ``train.loss_type`` values,
            when swept, are checked against the data's shape.

    Returns:
        ``Findings``: problems (call ``raise_if_any``) and notes to print.

    Example:
        >>> check_job(load_job_config(None, ["data.train=missing.jsonl"])).problems
        ["data.train: 'missing.jsonl' does not exist; give an existing file, folder, glob or URI"]
    """
    found = Findings()
    d = job.data
    tokenizer = functools.cache(lambda: _load_tokenizer(job))
    model_problems = check_model(job.model.name_or_path, job.model.trust_remote_code, "model.name_or_path",
                                 revision=job.model.revision)
    found.problems += model_problems
    if not model_problems:
        found.problems += _tokenizer_problems(tokenizer, job)
    attributes = tuple(job.train["attributes"] or ()) or None
    for spec, name in ((d.train, "data.train"), (d.eval, "data.eval")):
        if spec:
            fmt = check_pairs(spec, name, d, found, None if model_problems else tokenizer, full_pass,
                              attributes=attributes)
            found.problems += _loss_problems(fmt, name, job.train["loss_type"], search_space)
            if name == "data.train" and fmt is not None:
                found.problems += _metric_problems(job, fmt, search_space is not None)
    found.problems += check_storage(job.storage.path, "storage.path")
    return found


def _metric_problems(job, fmt: str, sweep: bool) -> list[str]:
    """A checkpoint ranking (or a sweep's metric) by a metric the data's shape never reports."""
    from rayreward.core.group_metrics import metric_shape_problem

    shape = "ratings" if fmt == "ratings" else "groups" if fmt in ("ranked", "ranked_lists") else "pairs"
    attributes = tuple(job.train["attributes"] or ())
    fields = [("storage.checkpoint_score_attribute", job.storage.checkpoint_score_attribute)]
    if sweep:
        fields.append(("tune.metric", job.tune.metric))
    problems = []
    for field_name, metric in fields:
        problem = metric_shape_problem(metric, shape, attributes)
        if problem:
            problems.append(f"{field_name}: {problem}")
    return problems


def _loss_problems(fmt: str | None, name: str, loss_type: str, search_space: dict | None) -> list[str]:
    """The losses that cannot train ``name``'s data (format ``fmt``): the job's own, or each
    value of a swept ``train.loss_type``."""
    from rayreward.core.config import losses_for

    if fmt is None:
        return []
    fits = losses_for(fmt)
    spec = (search_space or {}).get("train.loss_type")
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, values), = spec.items()
        where = f"tune.search_space.train.loss_type.{kind}"
        return [f"{where}: got {v!r}, which cannot train {name}'s {fmt} data; expected one of {', '.join(fits)} "
                "for this data" for v in (values if isinstance(values, list) else []) if v not in fits]
    if loss_type in fits:
        return []
    return [f"{name}: got {fmt} data with train.loss_type={loss_type!r}; expected train.loss_type "
            f"{' or '.join(fits)} for {fmt} data"]


def check_pairs(spec: str, name: str, data_cfg, found: Findings, tokenizer=None, full_pass: bool = True,
                bad_rows: str | None = None, attributes: tuple[str, ...] | None = None) -> str | None:
    """Checks one source of preference pairs; returns its format (None when unreadable).

    ``tokenizer`` is a zero-argument callable (loaded only when the format needs it).
    """
    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.data.reader import ReadSpec, probe
    from rayreward.data.sources import DataSourceError, resolve_source

    on_bad = bad_rows or data_cfg.on_bad_rows
    names = data_cfg.columns.names()
    try:
        source = resolve_source(str(spec), field=name, role="eval" if name.endswith("eval") else "train")
        fmt, has_prompt, has_margin, _ = probe(source, data_cfg.format, names, on_bad, attributes=attributes)
    except BadRowError as exc:
        found.problems.append(f"{name}: {exc}")
        return None
    except (DataSourceError, DataFormatError) as exc:
        found.problems.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
        return None
    tok = None
    if tokenizer is not None and fmt in ("conversational", "pretokenized", "token_ids"):
        tok = tokenizer()
        if fmt == "conversational" and not data_cfg.chat_template and not getattr(tok, "chat_template", None):
            found.problems.append(f"{name}: got conversational pairs but the tokenizer has no chat template; "
                                  "expected data.chat_template (a Jinja template or a file holding one)")
    if not full_pass or source.filesystem.type_name != "local" or sum(source.sizes) > FULL_PASS_BYTES:
        return fmt
    plan = ReadSpec(source, fmt, names, has_prompt, has_margin, attributes=attributes)
    vocab = len(tok) if tok is not None and fmt in ("pretokenized", "token_ids") else None
    _full_pass(plan, name, on_bad, getattr(data_cfg, "identical_pairs", "warn"), vocab, found)
    return fmt


def _full_pass(plan, name: str, on_bad: str, identical: str | None, vocab: int | None, found: Findings) -> None:
    from rayreward.data.reader import canonical_row, iter_raw_rows
    from rayreward.data.sources import DataSourceError

    bad: list[str] = []
    late_margin: list[str] = []
    same: list[str] = []
    bad_count = 0
    margin = plan.names.margin
    for path in plan.source.files:
        where = plan.source.display(path)
        try:
            for number, raw, problem in iter_raw_rows(plan.source, path, None):
                place = f"{where}, row {number}"
                if problem is None:
                    row, found_problem = canonical_row(plan, raw)
                    if found_problem:
                        problem = f"field '{found_problem[0]}': {found_problem[1]}"
                    elif vocab is not None:
                        problem = _id_problem(raw, vocab)
                if problem is not None:
                    bad_count += 1
                    if len(bad) < _SHOWN:
                        bad.append(f"{place}: {problem}")
                    continue
                if not plan.has_margin and raw.get(margin) is not None:
                    late_margin.append(place)
                if identical and _identical(row, raw):
                    same.append(place)
        except DataSourceError as exc:
            found.problems.append(f"{name}: {exc}")
            return
    if bad_count and on_bad == "error":
        more = f" (and {bad_count - len(bad)} more)" if bad_count > len(bad) else ""
        found.problems.append(f"{name}: {bad_count} bad row(s){more}; expected every row well-formed, or "
                              "data.on_bad_rows=skip to drop and count them:\n      " + "\n      ".join(bad))
    elif bad_count:
        found.notes.append(f"{name}: {bad_count} bad row(s) will be skipped (data.on_bad_rows=skip), first: {bad[0]}")
    if late_margin:
        text = (f"{name}: {late_margin[0]}, field '{margin}': got a margin but the first row has none, so the data set "
                f"has no margin column and it would be ignored ({len(late_margin)} row(s)); expected '{margin}' "
                "in the first row too, or in no row")
        (found.problems if on_bad == "error" else found.notes).append(text)
    if same:
        text = (f"{name}: {len(same)} pair(s) with chosen identical to rejected, first {same[0]}; they carry no "
                "preference")
        if identical == "error":
            found.problems.append(text + "; expected none (data.identical_pairs=warn keeps them)")
        else:
            found.notes.append(text + " (data.identical_pairs=error refuses them)")


_ID_COLUMNS = (("input_ids_chosen", "input_ids_rejected"), ("chosen_ids", "rejected_ids"),
               ("chosen_input_ids", "rejected_input_ids"))


def _identical(row: dict[str, Any], raw: dict[str, Any]) -> bool:
    for chosen, rejected in _ID_COLUMNS:
        if chosen in raw and rejected in raw:
            return list(raw[chosen] or []) == list(raw[rejected] or [])
    return "chosen" in row and row.get("chosen") == row.get("rejected")


def _id_problem(raw: dict[str, Any], vocab: int) -> str | None:
    for col in (c for pair in _ID_COLUMNS for c in pair if c in raw):
        ids = list(raw[col] or [])
        if ids and (max(ids) >= vocab or min(ids) < 0):
            value = max(ids) if max(ids) >= vocab else min(ids)
            return f"field '{col}': got token id {value}; expected ids in [0, {vocab}) (the tokenizer's vocabulary)"
    return None


def _tokenizer_problems(tokenizer, job) -> list[str]:
    """The job's tokenizer settings load: EOS/pad tokens of the vocabulary, a chat template that exists."""
    try:
        tokenizer()
    except ValueError as exc:
        text = str(exc)
        key = next((f"train.{k}" for k in ("eos_token", "pad_token") if text.startswith(k)), "data.chat_template")
        return [f"{key}: {text}"]
    except OSError as exc:
        where = "data.chat_template" if job.data.chat_template else "model.name_or_path"
        return [f"{where}: the tokenizer does not load ({str(exc).splitlines()[0][:200]})"]
    return []


def _load_tokenizer(job):
    """The job's tokenizer (``tokenizer_spec``: the one Ray Data and the workers load)."""
    from rayreward.job.config import tokenizer_spec

    return tokenizer_spec(job).load()
