"""Bad inputs get a clear answer before Ray starts: exit 2, the file/row/field and what
was expected, no traceback (issue 13's corpus).

Each case runs the real command line in this process (``cli.main``); ``ray.init`` is
replaced by a recorder that fails the case if anything tries to start Ray. A few cases
run as a subprocess to check the console as a user sees it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayreward.commands import cli

SAMPLE_TRAIN = "data.train=" + str(Path(__file__).resolve().parents[1] / "rayreward" / "sample_data" / "train.jsonl")
GOOD = {"prompt": "Q: what is two plus two?", "chosen": " four", "rejected": " five"}


def rows(n: int = 50, **changes) -> list[dict]:
    """``n`` good pairs; ``changes`` maps a 1-based row number to a dict of fields to set
    (a value of ``...`` deletes the field)."""
    out = []
    for i in range(1, n + 1):
        row = {**GOOD, "chosen": f" four ({i})"}
        for key, value in changes.get(f"r{i}", {}).items():
            if value is ...:
                row.pop(key, None)
            else:
                row[key] = value
        out.append(row)
    return out


def write_jsonl(path: Path, items, broken: dict[int, str] | None = None) -> str:
    lines = [json.dumps(r) for r in items]
    for number, text in (broken or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_model_config(folder: Path, **config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
            "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 100}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return str(folder)


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the case if anything starts Ray (the preflight cases must not)."""
    import ray

    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("a preflight case started Ray")

    monkeypatch.setattr(ray, "init", refuse)
    yield calls
    assert not calls, "Ray was started"


def _files(tmp: Path) -> dict[str, str]:
    """Every input file the cases point at, written once per case into ``tmp``."""
    f: dict[str, str] = {}
    f["good"] = write_jsonl(tmp / "good.jsonl", rows())
    f["broken_deep"] = write_jsonl(tmp / "broken_deep.jsonl", rows(), {40: '{"chosen": "a", "rejected": '})
    f["empty_text"] = write_jsonl(tmp / "empty_text.jsonl", rows(r30={"chosen": "  "}))
    f["null_chosen"] = write_jsonl(tmp / "null_chosen.jsonl", rows(r25={"chosen": None}))
    f["int_chosen"] = write_jsonl(tmp / "int_chosen.jsonl", rows(r12={"chosen": 7}))
    f["no_rejected"] = write_jsonl(tmp / "no_rejected.jsonl", rows(r20={"rejected": ...}))
    f["late_margin"] = write_jsonl(tmp / "late_margin.jsonl", rows(r5={"margin": 1.5}))
    f["identical"] = write_jsonl(tmp / "identical.jsonl", rows(r17={"chosen": " same", "rejected": " same"}))
    f["robot"] = write_jsonl(tmp / "robot.jsonl", [
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "robot" if i == 3 else "assistant", "content": "go"}]}
        for i in range(1, 9)])
    f["oov_ids"] = write_jsonl(tmp / "oov_ids.jsonl", [
        {"input_ids_chosen": [1, 2, 3], "attention_mask_chosen": [1, 1, 1],
         "input_ids_rejected": [1, 2, 999999 if i == 6 else 4], "attention_mask_rejected": [1, 1, 1]}
        for i in range(1, 9)])
    f["empty"] = str(tmp / "empty.jsonl")
    Path(f["empty"]).write_text("")
    f["no_columns"] = write_jsonl(tmp / "no_columns.jsonl", [{"question": "a", "answer": "b"}] * 3)
    f["single"] = write_jsonl(tmp / "single.jsonl", [{"text": "one answer"}] * 3)
    f["single_broken"] = write_jsonl(tmp / "single_broken.jsonl", [{"text": "one answer"}] * 6, {4: "{nope"})
    f["array_broken"] = str(tmp / "array_broken.json")
    Path(f["array_broken"]).write_text('[{"chosen": "a", "rejected": "b"},\n {"chosen": "a" "rejected": "b"}]')
    csv_path = tmp / "margin.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["chosen", "rejected", "margin"])
        for i in range(1, 9):
            w.writerow([f"good {i}", f"bad {i}", "abc" if i == 4 else "1.0"])
    f["csv_margin"] = str(csv_path)
    (tmp / "nodata").mkdir()
    (tmp / "nodata" / "readme.txt").write_text("no data here")
    f["nodata"] = str(tmp / "nodata")
    f["a_file"] = str(tmp / "a_file")
    Path(f["a_file"]).write_text("x")
    f["bad_yaml"] = str(tmp / "bad.yaml")
    Path(f["bad_yaml"]).write_text("train: {learning_rate: 1e-5\n")
    f["list_yaml"] = str(tmp / "list.yaml")
    Path(f["list_yaml"]).write_text("- a\n- b\n")
    f["two_labels"] = write_model_config(tmp / "two_labels", architectures=["LlamaForSequenceClassification"],
                                         id2label={"0": "A", "1": "B"}, label2id={"A": 0, "B": 1})
    f["remote"] = write_model_config(tmp / "remote", model_type="my_custom_rm",
                                     auto_map={"AutoConfig": "modeling.MyConfig"})
    f["broken_config"] = str(tmp / "broken_config")
    os.makedirs(f["broken_config"])
    Path(f["broken_config"], "config.json").write_text("{not json")
    f["no_config"] = str(tmp / "no_config")
    os.makedirs(f["no_config"])
    for name, adapter in (("adapter_no_base", {"peft_type": "LORA"}),
                          ("adapter_missing_base", {"peft_type": "LORA", "base_model_name_or_path": "/nonexistent/base"})):
        os.makedirs(tmp / name)
        (tmp / name / "adapter_config.json").write_text(json.dumps(adapter))
        f[name] = str(tmp / name)
    f["model_dir"] = str(tmp / "some_model_dir")  # exists, no model yet: evaluate's data checks come first
    os.makedirs(f["model_dir"])
    return f


# (name, argv with {placeholders}, expected exit code, substrings the message must hold)
CASES = [
    # -- config ------------------------------------------------------------------------
    ("missing_train", ["check", "data.train=missing.jsonl"], 2, ["data.train", "missing.jsonl", "does not exist"]),
    ("negative_max_steps", ["check", "train.max_steps=-5"], 2, ["train.max_steps: got -5", "or -1"]),
    ("zero_batch", ["check", "train.per_device_train_batch_size=0"], 2,
     ["train.per_device_train_batch_size: got 0; expected a positive integer"]),
    ("negative_save_steps", ["check", "train.save_steps=-10"], 2, ["train.save_steps: got -10; expected a positive"]),
    ("lr_text", ["check", "train.learning_rate=abc"], 2, ["train.learning_rate: got 'abc'; expected a number"]),
    ("lr_typo", ["check", "train.learnig_rate=1e-5"], 2, ["did you mean 'train.learning_rate'"]),
    ("managed_output_dir", ["check", "train.output_dir=/tmp/x"], 2, ["train.output_dir: set by the job", "storage"]),
    ("zero_epochs", ["check", "train.num_train_epochs=0"], 2, ["train.num_train_epochs: got 0; expected a positive"]),
    ("zero_accumulation", ["check", "train.gradient_accumulation_steps=0"], 2,
     ["train.gradient_accumulation_steps: got 0"]),
    ("negative_weight_decay", ["check", "train.weight_decay=-1"], 2, ["train.weight_decay: got -1; expected a number >= 0"]),
    ("eval_batch_zero", ["check", "train.per_device_eval_batch_size=0"], 2, ["train.per_device_eval_batch_size: got 0"]),
    ("bool_as_int", ["check", "train.max_steps=true"], 2, ["train.max_steps: got True; expected an integer"]),
    ("negative_max_length", ["check", "data.max_length=-3"], 2, ["data.max_length: got -3; expected a positive integer"]),
    ("eval_split_range", ["check", "data.eval_split=1.5"], 2, ["data.eval_split: got 1.5; expected a fraction"]),
    ("unknown_format", ["check", "data.format=xml"], 2, ["data.format: got 'xml'; expected one of"]),
    ("bad_row_policy", ["check", "data.on_bad_rows=ignore"], 2, ["data.on_bad_rows: got 'ignore'"]),
    ("identical_policy", ["check", "data.identical_pairs=maybe"], 2, ["data.identical_pairs: got 'maybe'; expected one of warn, error"]),
    ("zero_workers", ["check", "scaling.num_workers=0"], 2, ["scaling.num_workers: got 0"]),
    ("zero_stage_five", ["check", "deepspeed.stage=5"], 2, ["deepspeed.stage: got 5; expected 0, 1, 2 or 3"]),
    ("lora_rank", ["check", "lora.r=0"], 2, ["lora.r: got 0; expected a positive integer"]),
    ("score_order", ["check", "storage.checkpoint_score_order=best"], 2, ["storage.checkpoint_score_order: got 'best'"]),
    ("unknown_section", ["check", "trian.learning_rate=1"], 2, ["trian", "unknown key", "did you mean 'train'"]),
    ("missing_config", ["check", "--config", "nope.yaml"], 2, ["--config", "nope.yaml", "does not exist"]),
    ("invalid_yaml", ["check", "--config", "{bad_yaml}"], 2, ["--config", "bad.yaml", "not valid YAML"]),
    ("yaml_list", ["check", "--config", "{list_yaml}"], 2, ["--config", "expected a mapping of sections"]),
    ("override_no_equals", ["check", "train.learning_rate"], 2, ["override 'train.learning_rate': expected KEY=VALUE"]),
    ("fp16_on_cpu", ["check", "scaling.use_gpu=false", "train.fp16=true"], 2, ["train.fp16: got true with scaling.use_gpu=false"]),
    ("all_at_once", ["check", "train.max_steps=-5", "data.max_length=0", "lora.r=0"], 2,
     ["3 problem(s)", "train.max_steps", "data.max_length", "lora.r"]),
    # -- model -------------------------------------------------------------------------
    ("model_missing_path", ["check", "model.name_or_path=/nonexistent/model", SAMPLE_TRAIN], 2,
     ["model.name_or_path: got '/nonexistent/model'; no such folder"]),
    ("model_no_config", ["check", "model.name_or_path={no_config}", SAMPLE_TRAIN], 2, ["model.name_or_path", "no config.json"]),
    ("model_broken_config", ["check", "model.name_or_path={broken_config}", SAMPLE_TRAIN], 2, ["model.name_or_path", "does not load"]),
    ("model_two_labels", ["check", "model.name_or_path={two_labels}", SAMPLE_TRAIN], 2, ["model.name_or_path", "2 outputs", "one output"]),
    ("model_remote_code", ["check", "model.name_or_path={remote}", SAMPLE_TRAIN], 2, ["model.trust_remote_code=true"]),
    ("model_unknown_builtin", ["check", "model.name_or_path=builtin:tiny-nothing"], 2,
     ["model.name_or_path: got 'builtin:tiny-nothing'; expected one of", "builtin:tiny-llama"]),
    ("model_uncached_hub_id", ["check", "model.name_or_path=someorg/no-such-model-xyz", SAMPLE_TRAIN], 2,
     ["model.name_or_path", "someorg/no-such-model-xyz", "local cache"]),
    # -- storage -----------------------------------------------------------------------
    ("storage_under_file", ["check", "storage.path={a_file}/runs"], 2, ["storage.path", "is a file"]),
    ("storage_unwritable", ["check", "storage.path=/proc/rayreward-runs"], 2, ["storage.path", "cannot write"]),
    ("storage_s3_unreachable", ["check", "storage.path=s3://rayreward-bucket/runs"], 2,
     ["storage.path", "s3://rayreward-bucket/runs", "object store"]),
    # -- data: first rows and full pass --------------------------------------------------
    ("broken_line_deep", ["check", "data.train={broken_deep}"], 2, ["broken_deep.jsonl, row 40", "broken JSON line"]),
    ("empty_text", ["check", "data.train={empty_text}"], 2, ["empty_text.jsonl, row 30", "'chosen'", "empty text"]),
    ("null_chosen", ["check", "data.train={null_chosen}"], 2, ["null_chosen.jsonl, row 25", "'chosen'", "missing value"]),
    ("int_chosen", ["check", "data.train={int_chosen}"], 2, ["int_chosen.jsonl, row 12", "'chosen'", "expected a string"]),
    ("missing_rejected", ["check", "data.train={no_rejected}"], 2, ["no_rejected.jsonl, row 20", "'rejected'"]),
    ("csv_margin_row4", ["check", "data.train={csv_margin}"], 2, ["margin.csv", "row 4", "margin"]),
    ("late_margin", ["check", "data.train={late_margin}"], 2, ["late_margin.jsonl, row 5", "'margin'", "first row"]),
    ("identical_refused", ["check", "data.train={identical}", "data.identical_pairs=error"], 2,
     ["identical.jsonl, row 17", "identical", "expected none"]),
    ("identical_warned", ["check", "data.train={identical}"], 0, ["1 pair(s) with chosen identical", "row 17"]),
    ("skip_counts", ["check", "data.train={broken_deep}", "data.on_bad_rows=skip"], 0,
     ["1 bad row(s) will be skipped", "row 40"]),
    ("unknown_role", ["check", "data.train={robot}"], 2, ["robot.jsonl, row 3", "'robot'"]),
    ("oov_token_ids", ["check", "data.train={oov_ids}"], 2, ["oov_ids.jsonl, row 6", "token id 999999", "vocabulary"]),
    ("empty_file", ["check", "data.train={empty}"], 2, ["empty.jsonl", "empty"]),
    ("no_pair_columns", ["check", "data.train={no_columns}"], 2, ["no_columns.jsonl", "'chosen'", "'rejected'"]),
    ("json_array_broken", ["check", "data.train={array_broken}"], 2, ["array_broken.json", "not valid JSON", "line 2"]),
    ("folder_without_data", ["check", "data.train={nodata}"], 2, ["data.train", "nodata"]),
    ("eval_missing", ["check", "data.train={good}", "data.eval=missing_eval.jsonl"], 2,
     ["data.eval", "missing_eval.jsonl", "does not exist"]),
    ("hub_dataset_name", ["check", "data.train=Anthropic/hh-rlhf"], 2, ["data.train", "hub"]),
    ("no_eval_is_fine", ["check", "data.train={good}"], 0, ["no eval data: accuracy will not be measured", "data.eval"]),
    # -- evaluate ----------------------------------------------------------------------
    ("evaluate_broken_line", ["evaluate", "--model", "{model_dir}", "--data", "{broken_deep}"], 2,
     ["broken_deep.jsonl, row 40", "broken JSON line"]),
    ("evaluate_null_chosen", ["evaluate", "--model", "{model_dir}", "--data", "{null_chosen}"], 2,
     ["null_chosen.jsonl, row 25", "'chosen'", "missing value"]),
    ("evaluate_int_chosen", ["evaluate", "--model", "{model_dir}", "--data", "{int_chosen}"], 2,
     ["int_chosen.jsonl, row 12", "'chosen'"]),
    ("evaluate_single_answers", ["evaluate", "--model", "{model_dir}", "--data", "{single}"], 2,
     ["--data", "expected preference pairs", "rayreward score"]),
    ("evaluate_missing_model", ["evaluate", "--model", "/nonexistent/rm", "--data", "{good}"], 2,
     ["--model: got '/nonexistent/rm'; no such folder", "a hub id such as org/name", "s3://"]),
    ("evaluate_hub_id_not_cached_offline", ["evaluate", "--model", "nobody/no-such-rm", "--data", "{good}"], 2,
     ["--model: got 'nobody/no-such-rm'", "not in the local Hugging Face cache while HF_HUB_OFFLINE=1",
      "`hf download nobody/no-such-rm`", "or pass a model folder"]),
    ("evaluate_hub_revision_not_cached", ["evaluate", "--model", "nobody/no-such-rm", "--revision", "v2",
                                          "--data", "{good}"], 2,
     ["at revision 'v2'", "`hf download nobody/no-such-rm --revision v2`"]),
    ("evaluate_folder_neither_model_nor_adapter", ["evaluate", "--model", "{nodata}", "--data", "{good}"], 2,
     ["--model: got", "nodata'; the folder is neither a model", "nor a PEFT adapter (adapter_config.json)"]),
    ("score_adapter_without_base", ["score", "--model", "{adapter_no_base}", "--data", "{good}",
                                    "--out", "{tmp}/o.jsonl"], 2,
     ["adapter_no_base', a PEFT adapter whose adapter_config.json names no base model (base_model_name_or_path)"]),
    ("score_adapter_base_missing", ["score", "--model", "{adapter_missing_base}", "--data", "{good}",
                                    "--out", "{tmp}/o.jsonl"], 2,
     ["adapter_missing_base', an adapter whose base model '/nonexistent/base'; no such folder"]),
    ("score_revision_of_a_folder", ["score", "--model", "{nodata}", "--revision", "main", "--data", "{good}",
                                    "--out", "{tmp}/o.jsonl"], 2,
     ["--revision: got 'main', which applies to hub ids", "(drop --revision)"]),
    ("score_s3_model_unreachable", ["score", "--model", "s3://rayreward/models/rm", "--data", "{good}",
                                    "--out", "{tmp}/o.jsonl"], 2,
     ["--model: got 's3://rayreward/models/rm'; cannot reach the object store", "AWS_ENDPOINT_URL"]),
    ("serve_missing_model", ["serve", "--model", "/nonexistent/rm"], 2,
     ["serve.models (--model): got '/nonexistent/rm'; no such folder"]),
    ("serve_hub_id_not_cached_offline", ["serve", "--model", "nobody/no-such-rm", "--revision", "main"], 2,
     ["serve.models (--model): got 'nobody/no-such-rm' at revision 'main'", "HF_HUB_OFFLINE=1"]),
    ("evaluate_two_labels", ["evaluate", "--model", "{two_labels}", "--data", "{good}"], 2, ["--model", "2 outputs"]),
    ("evaluate_missing_data", ["evaluate", "--model", "{model_dir}", "--data", "nope.jsonl"], 2, ["--data", "nope.jsonl"]),
    ("evaluate_negative_show", ["evaluate", "--model", "{model_dir}", "--data", "{good}", "--show", "-1"], 2,
     ["--show: got -1; expected a number >= 0"]),
    ("evaluate_out_unwritable", ["evaluate", "--model", "{model_dir}", "--data", "{good}", "--out", "/proc/rr/eval"], 2,
     ["--out", "cannot write"]),
    # -- score -------------------------------------------------------------------------
    ("score_out_suffix", ["score", "--model", "{model_dir}", "--data", "{good}", "--out", "x.txt"], 2,
     ["--out: got 'x.txt'; expected a .parquet or .jsonl file"]),
    ("score_broken_line", ["score", "--model", "{model_dir}", "--data", "{single_broken}", "--out", "{tmp}/o.jsonl"], 2,
     ["single_broken.jsonl, row 4", "broken JSON line"]),
    ("score_no_layout", ["score", "--model", "{model_dir}", "--data", "{no_columns}", "--out", "{tmp}/o.jsonl"], 2,
     ["no_columns.jsonl", "expected 'chosen' and 'rejected' (pairs), 'text'"]),
    ("score_pairs_bad_row", ["score", "--model", "{model_dir}", "--data", "{int_chosen}", "--out", "{tmp}/o.jsonl"], 2,
     ["int_chosen.jsonl, row 12", "'chosen'"]),
    ("score_missing_model", ["score", "--model", "/nonexistent/rm", "--data", "{good}", "--out", "{tmp}/o.jsonl"], 2,
     ["--model: got '/nonexistent/rm'"]),
    ("score_out_unwritable", ["score", "--model", "{model_dir}", "--data", "{good}", "--out", "/proc/rr/o.jsonl"], 2,
     ["--out", "cannot write"]),
    # -- export ------------------------------------------------------------------------
    ("export_missing_checkpoint", ["export", "/nonexistent/checkpoint-000010", "{tmp}/out"], 2,
     ["checkpoint: got '/nonexistent/checkpoint-000010'; no such folder"]),
    ("export_out_under_file", ["export", "{model_dir}", "{a_file}/out"], 2, ["out: got", "is a file"]),
    ("export_missing_base", ["export", "{model_dir}", "{tmp}/out", "--base-model", "/nonexistent/base"], 2,
     ["--base-model: got '/nonexistent/base'; no such folder"]),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name,argv,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, code, expected, tmp_path, monkeypatch, capsys, no_ray):
    files = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    # An S3 endpoint on a closed loopback port: "no reachable endpoint", answered fast.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("RAYREWARD_DEBUG", raising=False)
    args = [a.format(tmp=tmp_path, **files) for a in argv]
    started = time.process_time()
    rc = cli.main(args)
    cpu = time.process_time() - started
    out, err = capsys.readouterr()
    text = out + err
    assert rc == code, text
    for piece in expected:
        assert piece in text, f"{piece!r} not in:\n{text}"
    assert "Traceback" not in text
    # In seconds of CPU (wall time depends on the machine's load): the slowest part is
    # importing transformers, about 11 s on this machine, which the first case pays.
    assert cpu < 60, cpu


def _run_cli(args: list[str], tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, float, Path]:
    ray_tmp = tmp_path / "ray_tmp"
    ray_tmp.mkdir()
    full_env = {k: v for k, v in os.environ.items() if k != "RAYREWARD_DEBUG"}
    full_env.update({"RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", **env})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rayreward", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=600)
    return done, time.monotonic() - started, ray_tmp


@pytest.mark.timeout(900)
def test_console_has_no_traceback_and_starts_no_ray(tmp_path):
    """As a user sees it: ``check data.train=missing.jsonl`` fails with exit 2, one
    message, no traceback, and no Ray session directory appears."""
    done, elapsed, ray_tmp = _run_cli(["check", "data.train=missing.jsonl"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "data.train: 'missing.jsonl' does not exist" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not any(ray_tmp.iterdir()), list(ray_tmp.iterdir())


@pytest.mark.timeout(900)
def test_train_refuses_bad_data_before_ray(tmp_path):
    """``train`` runs the same preflight: a broken line deep in the file stops it before
    any cluster starts, naming the file and line."""
    data = write_jsonl(tmp_path / "broken.jsonl", rows(), {33: "{oops"})
    done, _, ray_tmp = _run_cli(["train", f"data.train={data}", "storage.path=runs"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "broken.jsonl, row 33: broken JSON line" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not any(ray_tmp.iterdir())


@pytest.mark.timeout(900)
def test_debug_shows_the_traceback(tmp_path):
    done, _, _ = _run_cli(["check", "--debug", "train.max_steps=-5"], tmp_path)
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "train.max_steps: got -5" in done.stderr
    (tmp_path / "again").mkdir()
    done, _, _ = _run_cli(["check", "train.max_steps=-5"], tmp_path / "again", RAYREWARD_DEBUG="1")
    assert done.returncode == 2 and "Traceback" in done.stderr
    # Every command's errors become exit codes in one place (cli): serve's config problems too,
    # with the config they come from named, and the traceback under --debug.
    for debug in ([], ["--debug"]):
        (tmp_path / f"serve{len(debug)}").mkdir()
        done, _, _ = _run_cli(["serve", "--model", "m", "serve.batch.wait_ms=-1", *debug], tmp_path / f"serve{len(debug)}")
        assert done.returncode == 2 and "problem(s) in the serve config" in done.stderr
        assert ("Traceback" in done.stderr) == bool(debug), done.stderr


def test_user_error_is_found_behind_a_wrapper():
    """A user error wrapped by another exception (as Ray wraps a task's) still maps to exit 2."""
    from rayreward.data.formats import BadRowError

    try:
        try:
            raise BadRowError("data.jsonl", 4, "chosen", "empty text")
        except BadRowError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert isinstance(cli.user_error(outer), BadRowError)
    assert cli.user_error(RuntimeError("a bug")) is None


def test_a_closed_console_stops_the_command_quietly_with_sigpipes_status(tmp_path):
    # `rayreward ... | head`: the reader leaves; the command stops with 141 (128 + SIGPIPE),
    # no traceback and no "internal error", and says so on stderr.
    proc = subprocess.Popen([sys.executable, "-m", "rayreward", "check", "storage.path=runs"], cwd=tmp_path,
                            env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "rayreward check: stopped: its output was closed (broken pipe)" in err
    assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err
