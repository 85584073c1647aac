"""The path a user takes after the demo: their own model and data, no demo setting leaking
into it, one tokenization on every path, a command line that parses as people type it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayreward.job.config import ConfigError, load_job_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "rayreward" / "sample_data"


# -- demo settings only in the demo ---------------------------------------------------------


def test_a_pretrained_model_starts_from_reward_config_defaults_not_the_demo(minilm_dir):
    from rayreward.core.config import RewardConfig
    from rayreward.job.config import run_name

    own = RewardConfig(output_dir="unused", report_to=[])
    job = load_job_config(None, [f"model.name_or_path={minilm_dir}", f"data.train={SAMPLE / 'train.jsonl'}"])
    # TRL's RewardConfig defaults, not the tiny demo model's lr 2e-3 / batch 16 / cosine.
    assert job.train["learning_rate"] == own.learning_rate == 1e-4
    assert job.train["per_device_train_batch_size"] == own.per_device_train_batch_size == 8
    assert job.train["lr_scheduler_type"] == "linear" and job.train["logging_steps"] == 10
    assert set(job.train) == {"eval_strategy"}  # set by the no-eval-data rule, nothing else
    assert job.data.eval is None  # the demo's eval file is not inherited
    assert run_name(job).startswith("reward-")


def test_a_pretrained_model_needs_its_own_training_pairs(minilm_dir):
    with pytest.raises(ConfigError) as info:
        load_job_config(None, [f"model.name_or_path={minilm_dir}"])
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"data.train: required with model.name_or_path='{minilm_dir}'")


def test_the_demo_keeps_its_settings_data_and_run_name():
    from rayreward.job.config import is_demo, run_name

    job = load_job_config()
    assert job.train["learning_rate"] == 2e-3 and job.train["per_device_train_batch_size"] == 16
    assert job.data.train == str(SAMPLE / "train.jsonl") and job.data.eval == str(SAMPLE / "eval.jsonl")
    assert is_demo(job) and run_name(job) == "demo"
    # A built-in model on the user's own pairs: the demo's training values, its own run.
    own = load_job_config(None, [f"data.train={SAMPLE / 'eval.jsonl'}"])
    assert own.train["learning_rate"] == 2e-3 and own.data.eval is None
    assert not is_demo(own) and run_name(own).startswith("reward-")


def test_use_gpu_auto_follows_the_cluster_and_says_so():
    from rayreward.job.config import resolve_scaling

    job = load_job_config()
    assert job.scaling.use_gpu == "auto"
    on_cpu, line = resolve_scaling(job, 0)
    assert on_cpu.scaling.use_gpu is False and "CPUs: the cluster has no GPU" in line
    on_gpu, line = resolve_scaling(job, 8)
    assert on_gpu.scaling.use_gpu is True and "GPUs: the cluster has 8" in line
    named = load_job_config(None, ["scaling.use_gpu=false"])
    assert resolve_scaling(named, 8) == (named, None)
    with pytest.raises(ConfigError, match="train.fp16: got true, and scaling.use_gpu=auto found no GPU"):
        resolve_scaling(load_job_config(None, ["train.fp16=true"]), 0)
    with pytest.raises(ConfigError, match="scaling.use_gpu: got 'maybe'; expected true, false or auto"):
        load_job_config(None, ["scaling.use_gpu=maybe"])


def test_check_says_where_each_value_comes_from(tmp_path, capsys, minilm_dir):
    from rayreward.commands.cli import main

    config = tmp_path / "job.yaml"
    config.write_text(f"model:\n  name_or_path: {minilm_dir}\ndata:\n  train: {SAMPLE / 'train.jsonl'}\n"
                      "train:\n  num_train_epochs: 1\n")
    assert main(["check", "--config-only", "--config", str(config), "train.learning_rate=2e-5"]) == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if "#" in line}
    assert lines["learning_rate"].endswith("# override") and "2.0e-05" in lines["learning_rate"]
    assert lines["num_train_epochs"].endswith("# file") and lines["name_or_path"].endswith("# file")
    assert lines["per_device_train_batch_size"].endswith("# default") and ": 8 " in lines["per_device_train_batch_size"]
    assert lines["use_gpu"].endswith("# default") and "auto" in lines["use_gpu"]
    assert lines["eval_strategy"].endswith("# derived")
    assert main(["check", "--config-only"]) == 0
    demo = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines() if "#" in line}
    assert demo["learning_rate"].endswith("# demo") and demo["train"].endswith("# demo")
    assert demo["name"].endswith("# demo") and ": demo " in demo["name"]


# -- the command line -----------------------------------------------------------------------


def test_options_and_overrides_mix_and_version_is_printed(capsys):
    from rayreward.commands.cli import command_parser, main

    args = command_parser("train").parse_intermixed_args(["a.b=1", "-v", "c.d=2", "--address", "auto", "e.f=3"])
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=3"] and args.verbose and args.address == "auto"
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    from importlib import metadata

    assert capsys.readouterr().out.strip() == f"rayreward {metadata.version('rayreward')}"
    # A mistyped command names the choices and exits 2, with no traceback.
    with pytest.raises(SystemExit) as info:
        main(["trian"])
    assert info.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_train_chat_template_path_points_at_the_key_that_drives_tokenization():
    with pytest.raises(ConfigError) as info:
        load_job_config(None, ["train.chat_template_path=template.jinja"])
    assert info.value.problems == ["train.chat_template_path: set by the job; set data.chat_template (a Jinja "
                                   "template, a file holding one, or a tokenizer id or folder whose template is "
                                   "cloned): the data pipeline tokenizes with it"]


def test_a_bad_eos_token_is_named_before_ray_starts(capsys):
    from rayreward.commands.cli import main

    assert main(["check", "train.eos_token=<nope>"]) == 2
    err = capsys.readouterr().err
    assert "train.eos_token: eos_token='<nope>' is not in the vocabulary" in err and "Traceback" not in err


# -- one tokenization: Ray Data (what `rayreward train` feeds its workers) == RewardTrainer ---

CHAT_SOURCE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def _source_tokenizer(folder: Path) -> str:
    """A tokenizer folder with a chat template and two special tokens the bundled one lacks."""
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_SOURCE_TEMPLATE
    tok.save_pretrained(folder)
    return str(folder)


def _in_process_ids(rows, settings: dict, tmp_path) -> tuple[list, list, int]:
    from rayreward import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], max_length=256, **settings)
    trainer = RewardTrainer(model="builtin:tiny-llama", args=args, train_dataset=rows)
    pairs = trainer.train_dataset.pairs
    embeddings = trainer.model.get_input_embeddings().num_embeddings
    return [p["input_ids_chosen"] for p in pairs], [p["input_ids_rejected"] for p in pairs], embeddings


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_tokenizer_setting_gives_rayreward_train_the_ids_of_the_in_process_trainer(ray_local, tmp_path):
    from rayreward.data import build_datasets
    from rayreward.data.tokenizer import TokenizerSpec, builtin_tokenizer, fit_embeddings
    from rayreward.job.config import tokenizer_spec

    text_rows = [json.loads(line) for line in (SAMPLE / "eval.jsonl").read_text().splitlines()[:24]]
    chats = [{"chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["rejected"]}]}
             for r in text_rows]
    source = _source_tokenizer(tmp_path / "chat-source")
    jinja = tmp_path / "template.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    cases = [
        ("eos_token", text_rows, ["train.eos_token=<unk>", "train.pad_token=<|user|>"],
         {"eos_token": "<unk>", "pad_token": "<|user|>"}),
        ("jinja file", chats, [f"data.chat_template={jinja}"], {"chat_template_path": str(jinja)}),
        ("cloned template", chats, [f"data.chat_template={source}"], {"chat_template_path": source}),
    ]
    vocab = len(builtin_tokenizer())
    for name, rows, overrides, settings in cases:
        data = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        job = load_job_config(None, [f"data.train={data}", "data.eval=null", "data.max_length=256",
                                     "data.tokenize_actors=1", "data.tokenize_num_cpus=0.5", *overrides])
        spec = tokenizer_spec(job)
        assert isinstance(spec, TokenizerSpec)
        table = build_datasets(job.data, spec).train.to_arrow_refs()
        import pyarrow as pa
        import ray

        got = pa.concat_tables(ray.get(table)).to_pydict()
        chosen, rejected, embeddings = _in_process_ids(rows, settings, tmp_path / name.replace(" ", "_"))
        assert got["input_ids_chosen"] == chosen, name
        assert got["input_ids_rejected"] == rejected, name
        # What the worker does with the same spec: its tokenizer, and the model's embeddings.
        from rayreward.core.model import load_reward_model

        worker_tok, model = spec.load(), load_reward_model("builtin:tiny-llama")
        fit_embeddings(model, worker_tok)
        assert model.get_input_embeddings().num_embeddings == embeddings, name
        if name == "cloned template":
            assert len(worker_tok) == vocab + 2 and embeddings > vocab and embeddings % 64 == 0
            assert worker_tok.convert_tokens_to_ids("<|im_start|>") in chosen[0]
        if name == "eos_token":
            assert all(ids[-1] == worker_tok.convert_tokens_to_ids("<unk>") for ids in chosen)


# -- one preflight: the command line and the Python entry point say the same ------------


def test_fit_reports_the_command_lines_preflight_problems_before_any_work(tmp_path, capsys):
    from rayreward import fit
    from rayreward.checks.findings import PreflightError
    from rayreward.commands.cli import main

    overrides = ["model.name_or_path=/nonexistent/model", f"data.train={tmp_path / 'missing.jsonl'}",
                 "storage.path=/proc/rayreward-runs"]
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    from_cli = [line.removeprefix("  - ") for line in err.splitlines() if line.startswith("  - ")]
    with pytest.raises(PreflightError) as info:
        fit(load_job_config(None, overrides))  # no Ray is running: the checks come first
    assert info.value.problems == from_cli and len(from_cli) == 3
    assert from_cli[0].startswith("model.name_or_path: got '/nonexistent/model'; no such folder")
    assert "Traceback" not in err


def test_make_installs_torch_from_the_index_given_and_pypi_otherwise():
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("no make on this machine")
    index = "https://download.pytorch.org/whl/cpu"

    def torch_line(*extra: str) -> str:
        out = subprocess.run(["make", "-n", "-B", ".venv/bin/.installed", *extra], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout
        return next(line for line in out.splitlines() if "torch==" in line)

    assert f"--index-url {index} torch==2.13.0" in torch_line(f"TORCH_INDEX={index}")
    assert "--index-url" not in torch_line()
