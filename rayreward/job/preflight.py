"""Preflight: everything knowable about a command's inputs, checked before Ray starts.

One set of checks for ``check``, ``train``, ``tune``, ``evaluate``, ``score`` and
``export``: the config (typed and range-checked when it is built), each data source
(resolves, readable, format and columns from its first rows, a chat template where the
format needs one, then a full pass over local files: broken lines, bad rows, margins
that appear late, identical pairs, pre-tokenized ids outside the vocabulary), the model
(exists, config parses, one output, remote code allowed) and storage (writable, or the
object store answers within a few seconds). Every problem is collected and raised at
once as a ``PreflightError`` whose lines read ``field: got X; expected Y``.

The full pass runs on the driver with the same row reader and checks as the training
pipeline's read tasks (``rayreward.data.reader``), so ``train``, ``evaluate`` and
``score`` name a bad row the same way. Sources larger than ``FULL_PASS_BYTES`` (or in
an object store) get only the first-rows check here; their read tasks check every row
before training starts.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("rayreward")

FULL_PASS_BYTES = 64 << 20  # about 6 s of one core (11 MB/s of JSON lines measured here)
STORE_TIMEOUT_S = 5.0
_SHOWN = 5  # bad rows named per source; the rest are counted
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class PreflightError(ValueError):
    """Inputs with problems; ``problems`` lists every one, one line each."""

    def __init__(self, problems: list[str], what: str = "the inputs"):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {what}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Findings:
    """What preflight found: problems stop the command, notes are printed and it goes on."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise PreflightError(self.problems, what)


# -- a job (check, train, tune) ---------------------------------------------------------


def check_job(job, full_pass: bool = True) -> Findings:
    """Data sources, model and storage of a built, valid ``JobConfig``.

    Args:
        job: from ``rayreward.job.config.load_job_config`` (already typed and range-checked).
        full_pass: also read every row of local sources up to ``FULL_PASS_BYTES``.

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
    for spec, name in ((d.train, "data.train"), (d.eval, "data.eval")):
        if spec:
            check_pairs(spec, name, d, found, None if model_problems else tokenizer, full_pass)
    found.problems += check_storage(job.storage.path, "storage.path")
    return found


def check_pairs(spec: str, name: str, data_cfg, found: Findings, tokenizer=None, full_pass: bool = True,
                bad_rows: str | None = None) -> str | None:
    """Checks one source of preference pairs; returns its format (None when unreadable).

    ``tokenizer`` is a zero-argument callable (loaded only when the format needs it).
    """
    from rayreward.data.formats import BadRowError, DataFormatError
    from rayreward.data.reader import ReadPlan, probe
    from rayreward.data.sources import DataSourceError, resolve_source

    on_bad = bad_rows or data_cfg.on_bad_rows
    names = data_cfg.columns.names()
    try:
        source = resolve_source(str(spec), field=name, role="eval" if name.endswith("eval") else "train")
        fmt, has_prompt, has_margin, _ = probe(source, data_cfg.format, names, on_bad)
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
    plan = ReadPlan(source, fmt, names, has_prompt, has_margin)
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


# -- evaluate, score, export ------------------------------------------------------------


def check_scoring(model: str, data: str, pairs_only: bool, text_column: str | None = None,
                  prompt_column: str = "prompt", revision: str | None = None) -> Findings:
    """``evaluate`` (``pairs_only``) and ``score``: the model (folder, adapter, hub id or
    object-store URI: ``evaluation.model_ref.model_problems``) and every row of the data."""
    from rayreward.data.config import ColumnsConfig, DataConfig
    from rayreward.data.formats import DataFormatError
    from rayreward.data.reader import ReadPlan, iter_raw_rows
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
    if pairs_only and layout.kind != "pairs":
        found.problems.append(f"--data: got columns {sorted(first[1])} in {source.display(source.files[0])}; "
                              "expected preference pairs ('chosen' and 'rejected'); to score single answers use "
                              "`rayreward score`")
        return found
    if layout.kind == "pairs":
        cfg = DataConfig(train=str(data), columns=ColumnsConfig(prompt=prompt_column))
        check_pairs(str(data), "--data", cfg, found, full_pass=True)
    elif source.filesystem.type_name == "local" and sum(source.sizes) <= FULL_PASS_BYTES:
        names = layout.names
        plan = ReadPlan(source, layout.fmt, names, layout.fmt != "implicit_prompt" and names.prompt in first[1], False)
        _full_pass(plan, "--data", "error", None, None, found)
    return found


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


# -- model ------------------------------------------------------------------------------


def check_model_ref(model: str, revision: str | None = None, name: str = "--model", ensemble: bool = False
                    ) -> list[str]:
    """A model to score with (``evaluate``, ``score``, ``serve``): a folder, run folder,
    checkpoint, PEFT adapter folder, hub id or object-store URI that is there, and, when
    its config is at hand, a reward model with one output."""
    from rayreward.evaluation.model_ref import is_hub_id, model_problems

    folder = os.path.expanduser(model)
    if os.path.isfile(os.path.join(folder, "config.json")):
        # A config that does not load or has several outputs says more than "no weights".
        problems = check_model(folder, False, name, one_output=True)
        if problems:
            return problems
    problems = model_problems(model, revision, name, ensemble=ensemble)
    if problems:
        return problems
    if is_hub_id(model) and not os.path.isdir(folder):
        return _hub_reward_head(model, revision, name)
    return []


def _hub_reward_head(model: str, revision: str | None, name: str) -> list[str]:
    import json

    from rayreward.evaluation.model_ref import hub_snapshot_config

    path = hub_snapshot_config(model, revision)
    if os.path.basename(path) != "config.json":
        return []  # an adapter: its head is checked when it is merged
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 1)
    if config.get("auto_map"):
        return [f"{name}: got {model!r}, whose code ships with the checkpoint; scoring runs only built-in "
                "architectures (load it yourself with trust_remote_code=True and save_pretrained a folder)"]
    heads = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
    if not heads:
        return [f"{name}: got {model!r}, a {', '.join(config.get('architectures') or ['model'])} without a reward "
                "head (expected *ForSequenceClassification with one output); train one first (`rayreward train "
                f"model.name_or_path={model}`)"]
    if labels != 1:
        return [f"{name}: got a classification model with {labels} outputs; expected a reward model with one output"]
    return []


def check_model(name_or_path: str, trust_remote_code: bool = False, name: str = "model.name_or_path",
                one_output: bool = False, revision: str | None = None) -> list[str]:
    """The model exists (a folder or a cached hub id), its config parses, and it has one
    output where ``one_output`` (a trained reward model); remote code needs the flag.

    A base model with several labels is fine for training: its head is replaced.
    """
    from rayreward.data.tokenizer import is_builtin

    if is_builtin(name_or_path):
        from rayreward.core.tiny import builtin_names

        if name_or_path not in builtin_names():
            return [f"{name}: got {name_or_path!r}; expected one of {', '.join(builtin_names())}"]
        return []
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            return [f"{name}: got {name_or_path!r}; the folder has no config.json (expected a model folder written "
                    "by save_pretrained)"]
    elif not _HUB_ID.match(name_or_path):
        return [f"{name}: got {name_or_path!r}; no such folder (expected a model folder written by save_pretrained "
                "or a Hugging Face model id such as org/name)"]
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            return [f"{name}: got {name_or_path!r}, whose code ships with the checkpoint; expected "
                    "model.trust_remote_code=true to run it (only for code you trust)"]
        if os.path.isdir(folder):
            return [f"{name}: got {name_or_path!r}; its config.json does not load ({text.splitlines()[0][:200]})"]
        return [f"{name}: got {name_or_path!r}; not a folder here, and not a Hugging Face model id in the local "
                "cache (expected an existing model folder, or a hub id downloaded beforehand)"]
    if getattr(config, "auto_map", None) and not trust_remote_code:
        return [f"{name}: got {name_or_path!r}, whose code ships with the checkpoint; expected "
                "model.trust_remote_code=true to run it (only for code you trust)"]
    labels = getattr(config, "num_labels", 1)
    heads = [a for a in getattr(config, "architectures", None) or [] if a.endswith("ForSequenceClassification")]
    # A plain base model's config says num_labels=2 by default; only a classification
    # head that is there in the weights has to have one output.
    if (one_output or heads) and labels != 1:
        return [f"{name}: got a classification model with {labels} outputs (num_labels={labels}); expected a "
                "reward model with one output (or a base model without a classification head)"]
    return []


# -- storage ----------------------------------------------------------------------------


def check_storage(path: str, name: str = "storage.path", timeout: float = STORE_TIMEOUT_S) -> list[str]:
    """A local folder (or its nearest existing parent) that is writable, or an object
    store that answers within ``timeout`` seconds."""
    from rayreward.runtime.storage import is_uri

    if not is_uri(path):
        return _local_writable(path, name)
    return _store_answers(path, name, timeout)


def _local_writable(path: str, name: str) -> list[str]:
    target = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    probe_dir = target
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        return [f"{name}: got {path!r}; {probe_dir} is a file, expected a folder (or a path to create one at)"]
    try:
        # A real write: permission bits say nothing for root or on read-only mounts.
        fd, probe_file = tempfile.mkstemp(prefix=".rayreward-preflight-", dir=probe_dir)
        os.close(fd)
        os.remove(probe_file)
    except OSError as exc:
        return [f"{name}: got {path!r}; cannot write in {probe_dir} ({exc.strerror}), expected a folder you can "
                "write to"]
    return []


def _store_answers(uri: str, name: str, timeout: float) -> list[str]:
    result: dict[str, Any] = {}

    def ask():
        try:
            import pyarrow.fs as pafs

            from rayreward.runtime.storage import filesystem

            fs, inside = filesystem(uri)
            bucket = inside.split("/", 1)[0]
            result["type"] = fs.get_file_info(bucket).type
            result["missing"] = result["type"] == pafs.FileType.NotFound
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the user's to fix
            result["error"] = exc

    # A thread, not a pyarrow timeout: the AWS SDK retries (and resolves regions) for
    # much longer than its connect timeout.
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    hint = ("check the URI, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and, for an S3-compatible "
            "store, AWS_ENDPOINT_URL")
    if worker.is_alive():
        return [f"{name}: got {uri!r}; the object store did not answer within {timeout:g} s ({hint})"]
    if "error" in result:
        first = str(result["error"]).splitlines()[0][:200] if str(result["error"]) else type(result["error"]).__name__
        return [f"{name}: got {uri!r}; cannot reach the object store: {first} ({hint})"]
    if result.get("missing"):
        return [f"{name}: got {uri!r}; the bucket does not exist, expected an existing bucket ({hint})"]
    return []
