"""The job config: YAML + overrides, every problem reported at once, shipped examples valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayreward.job.tree import apply_overrides, parse_scalar
from rayreward.job.config import ConfigError, load_job_config, step_plan

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def problems_of(tmp_path, text: str = "", overrides=()) -> list[str]:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_job_config(str(path), overrides)
    return info.value.problems


def test_defaults_are_the_demo():
    job = load_job_config()
    assert job.model.name_or_path == "builtin:tiny-llama"
    assert job.scaling.num_workers == 2 and job.deepspeed.stage == 2 and job.scaling.use_gpu == "auto"
    assert job.data.train.endswith("sample_data/train.jsonl") and job.data.eval.endswith("sample_data/eval.jsonl")
    # 1600 pairs / 2 workers / 16 per batch = 50 steps an epoch, 3 epochs.
    assert step_plan(job, 1600).steps_per_epoch == 50 and step_plan(job, 1600).max_steps == 150


def test_overrides_parse_yaml_scalars_and_nest():
    base = {"train": {"learning_rate": 1e-5, "seed": 1}}
    out = apply_overrides(base, ["train.learning_rate=2e-5", "lora.r=16", "lora.enabled=true",
                                 "data.eval=null", "storage.name=run-1"])
    assert out == {"train": {"learning_rate": 2e-5, "seed": 1}, "lora": {"r": 16, "enabled": True},
                   "data": {"eval": None}, "storage": {"name": "run-1"}}
    assert base == {"train": {"learning_rate": 1e-5, "seed": 1}}  # not modified
    # Tune's sampled values: a mapping, used as they are.
    assert apply_overrides({}, {"train.learning_rate": 3e-4}) == {"train": {"learning_rate": 3e-4}}
    assert parse_scalar("no") == "no" and parse_scalar("off") == "off" and parse_scalar("false") is False
    assert parse_scalar("1e-3") == 1e-3 and parse_scalar("5") == 5 and parse_scalar("[q_proj, v_proj]") == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.learning_rate"])


def test_overrides_apply_over_a_file_and_without_one(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  learning_rate: 5e-4\nlora:\n  enabled: true\n")
    job = load_job_config(str(path), ["train.learning_rate=2e-5", "lora.r=16"])
    assert job.train["learning_rate"] == 2e-5 and job.lora.r == 16 and job.lora.enabled
    assert job.train["per_device_train_batch_size"] == 16  # the other demo defaults stay
    assert load_job_config(None, ["scaling.num_workers=3"]).scaling.num_workers == 3


def test_every_problem_is_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, """
model:
  dtype: float64
data:
  max_length: -3
  format: xml
lora:
  r: 0
deepspeed:
  stage: 1
  offload_optimizer: true
scaling:
  num_workers: 0
storage:
  checkpoint_score_order: best
""")
    assert "model.dtype: got 'float64'; expected one of auto, float32, bfloat16, float16" in problems
    assert "data.max_length: got -3; expected a positive integer" in problems
    assert any(p.startswith("data.format: got 'xml'; expected one of auto") for p in problems)
    assert "lora.r: got 0; expected a positive integer" in problems
    assert ("deepspeed.offload_optimizer: got true with deepspeed.stage=1; expected deepspeed.stage >= 2 "
            "(ZeRO-Offload), or offload_optimizer=false") in problems
    assert "scaling.num_workers: got 0; expected a positive integer" in problems
    assert "storage.checkpoint_score_order: got 'best'; expected max or min" in problems
    assert len(problems) == 7


def test_unknown_keys_suggest_the_closest(tmp_path):
    problems = problems_of(tmp_path, "modle:\n  name_or_path: x\n", ["data.max_lenght=3", "train.learnin_rate=1e-4",
                                                                       "deepspeed.offload_optimiser=true"])
    assert "modle: unknown key; did you mean 'model'?" in problems
    assert "data.max_lenght: unknown key; did you mean 'data.max_length'?" in problems
    assert "train.learnin_rate: unknown key; did you mean 'train.learning_rate'?" in problems
    assert "deepspeed.offload_optimiser: unknown key; did you mean 'deepspeed.offload_optimizer'?" in problems


def test_types_and_managed_train_fields(tmp_path):
    problems = problems_of(tmp_path, "", ["train.learning_rate=fast", "train.output_dir=/tmp/x", "lora.enabled=yes please",
                                          "train.max_length=64"])
    assert "train.learning_rate: got 'fast'; expected a number" in problems
    assert "train.output_dir: set by the job; the run folder is storage.path/storage.name; set those" in problems
    assert "train.max_length: set by the job; set data.max_length (the data pipeline tokenizes)" in problems
    assert "lora.enabled: got 'yes please'; expected true or false" in problems


def test_cross_field_rules(tmp_path):
    problems = problems_of(tmp_path, "", [
        "train.bf16=true", "train.fp16=true", "scaling.use_gpu=false", "deepspeed.stage=2",
        "deepspeed.offload_param=true", "storage.checkpoint_score_attribute=eval_accuracy", "train.eval_steps=20", "train.save_steps=30",
    ])
    assert "train.fp16: got true with train.bf16=true; expected at most one of them" in problems
    assert "train.fp16: got true with scaling.use_gpu=false; expected bf16 or fp32 on CPU workers" in problems
    assert ("deepspeed.offload_param: got true with deepspeed.stage=2; expected deepspeed.stage=3, "
            "or offload_param=false") in problems
    assert ("train.save_steps: got 30 with train.eval_steps=20; expected a multiple of eval_steps so each "
            "checkpoint's eval_accuracy is current") in problems
    # One training file and nothing else trains, without evaluation (issue 13's friction);
    # asking for evaluation without eval data is still refused.
    (tmp_path / "my.yaml").write_text("data:\n  train: my.jsonl\n")
    assert load_job_config(str(tmp_path / "my.yaml")).train["eval_strategy"] == "no"
    no_eval = problems_of(tmp_path, "data:\n  train: my.jsonl\n", ["train.eval_strategy=steps"])
    assert no_eval == ["train.eval_strategy: got 'steps' but there is no eval data; expected data.eval or "
                       "data.eval_split to be set, or train.eval_strategy=no"]
    streaming = problems_of(tmp_path, "", ["data.materialize=false"])
    assert streaming == ["train.max_steps: got no step count with data.materialize=false; expected a positive "
                         "integer (streamed data has no known length)"]


def test_checkpoint_eval_beside_training(tmp_path):
    # Off the training path: the workers do not evaluate unless asked, and checkpoints can
    # be ranked by the eval metrics Ray adds to them.
    job = load_job_config(None, ["storage.checkpoint_eval=ray", "storage.checkpoint_score_attribute=eval_accuracy",
                                 "train.save_steps=7"])
    assert job.train["eval_strategy"] == "no"
    assert load_job_config(None, ["storage.checkpoint_eval=ray", "train.eval_strategy=steps"]).train["eval_strategy"] == "steps"
    assert problems_of(tmp_path, "data:\n  train: my.jsonl\n", ["storage.checkpoint_eval=ray"]) == [
        "storage.checkpoint_eval: got 'ray' but there is no eval data; expected data.eval or data.eval_split to be "
        "set, or storage.checkpoint_eval=trainer"]
    assert problems_of(tmp_path, "", ["storage.checkpoint_eval=workers"]) == [
        "storage.checkpoint_eval: got 'workers'; expected trainer or ray"]


def test_deepspeed_file_is_checked(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    problems = problems_of(tmp_path, "", [f"deepspeed.config={bad}"])
    assert len(problems) == 1 and problems[0].startswith(f"deepspeed.config: got '{bad}'; not valid JSON")
    good = tmp_path / "ds_ok.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    from rayreward.job.deepspeed import deepspeed_config_for

    assert deepspeed_config_for(load_job_config(None, [f"deepspeed.config={good}"])) == {"zero_optimization": {"stage": 1}}


def test_generated_deepspeed_config():
    from rayreward.job.deepspeed import build_deepspeed_config

    zero2 = build_deepspeed_config(2)
    assert zero2["zero_optimization"]["stage"] == 2 and zero2["train_micro_batch_size_per_gpu"] == "auto"
    assert "optimizer" not in zero2  # the Trainer's AdamW: no fused_adam to compile
    zero3 = build_deepspeed_config(3, offload_optimizer=True, offload_param=True)
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert zero3["optimizer"]["type"] == "AdamW"  # ZeRO-Offload needs DeepSpeed's CPU Adam


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_examples_pass_check(path, monkeypatch, capsys):
    from rayreward.commands.cli import main

    monkeypatch.chdir(ROOT)
    # The configs name data and models of the machines they are written for: the config alone.
    assert main(["check", "--config-only", "--config", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_command_prints_problems(tmp_path, capsys):
    from rayreward.commands.cli import main

    assert main(["check", "train.learnin_rate=1"]) == 2
    assert "did you mean 'train.learning_rate'?" in capsys.readouterr().err


def test_help_is_generated_from_field_docs(capsys):
    from rayreward.commands.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "deepspeed.offload_optimizer = False" in out and "Keep optimizer state in CPU memory" in out
    assert "data.max_length = 1024" in out and "train.learning_rate = 0.0001 (demo: 0.002)" in out


def test_train_section_is_typed_from_reward_config():
    """Every train key's default is RewardConfig's own unless the demo sets it; iterating
    gives only the keys that are set (what RewardConfig(**train) receives)."""
    import dataclasses

    from rayreward.core.config import RewardConfig
    from rayreward.job.train_section import TRAIN_DEFAULTS, TrainSection

    own = {f.name: f.default for f in dataclasses.fields(RewardConfig) if f.init}
    train = TrainSection({"learning_rate": 1e-5}, demo_defaults=True)
    assert train["max_steps"] == own["max_steps"] == -1 and train.gradient_accumulation_steps == 1
    assert train["learning_rate"] == 1e-5 and train["per_device_train_batch_size"] == TRAIN_DEFAULTS[
        "per_device_train_batch_size"]
    assert set(train) == set(TRAIN_DEFAULTS) | {"learning_rate"}
    assert TrainSection({"max_steps": -1}).validate() == [] and TrainSection({"max_steps": 10}).validate() == []
    assert TrainSection({"max_steps": 0}).validate() == [
        "train.max_steps: got 0; expected a positive integer, or -1 to count steps from num_train_epochs"]
    with pytest.raises(KeyError):
        train["no_such_field"]


def test_yaml_reads_1_2_scalars():
    from rayreward.job.tree import parse_scalar

    assert parse_scalar("2e-5") == 2e-5 and parse_scalar("no") == "no" and parse_scalar("yes") == "yes"
    assert parse_scalar("true") is True and parse_scalar("null") is None and parse_scalar("12") == 12
    assert parse_scalar("[1, 2]") == [1, 2] and parse_scalar("{a: 1}") == {"a": 1}
