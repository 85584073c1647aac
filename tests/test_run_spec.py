"""The run spec the driver hands its workers, and the checkpoint manifest export reads.

No Ray: the spec is built from a job and a stand-in for its prepared data (only the pair
count and whether there is eval data matter), and a LoRA checkpoint folder is written
and exported in this process with the tiny model.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch

from rayreward.core.checkpoint import (
    LEGACY_JOB_FILE,
    MANIFEST_FILE,
    CheckpointManifest,
    export_checkpoint,
    read_manifest,
    write_manifest,
)
from rayreward.core.model import BaseModelSpec, LoraSpec, load_base_model, peft_config_for, wrap_peft
from rayreward.core.packed import PackingMode
from rayreward.data.feeding import BatchStream, GlobalBatchStream, accumulation_steps, batch_streams
from rayreward.data.packing import PackedPairCollator
from rayreward.data.tokenizer import TokenizerSpec
from rayreward.job.config import load_job_config, reward_config_kwargs, step_plan, tokenizer_spec
from rayreward.job.deepspeed import deepspeed_config_for
from rayreward.run.spec import run_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Prepared:
    num_train_pairs: int | None
    eval: Any = None
    kind: str = "pairs"


def old_worker_kwargs(job, output_dir: str, num_pairs: int, world_size: int) -> dict:
    """What a worker computed from the job dict before the run spec (the reference)."""
    kwargs = reward_config_kwargs(job, output_dir, step_plan(job, num_pairs).max_steps, deepspeed_config_for(job))
    if job.scaling.elastic:
        per_device = job.train["per_device_train_batch_size"]
        global_batch = job.scaling.max_workers * per_device * job.train["gradient_accumulation_steps"]
        kwargs["gradient_accumulation_steps"] = accumulation_steps(global_batch, per_device, world_size)
    return kwargs


JOBS = {
    "fixed": ["scaling.use_gpu=false", "scaling.num_workers=2", "train.eos_token=<unk>", "lora.enabled=true",
              "lora.target_modules=[q_proj, v_proj]", "model.attn_implementation=eager"],
    "elastic": ["scaling.use_gpu=false", "scaling.num_workers=[1, 3]", "train.per_device_train_batch_size=4",
                "train.gradient_accumulation_steps=2", "deepspeed.stage=3", "data.shuffle=none"],
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_spec_gives_each_worker_what_it_computed_from_the_job(name):
    job = load_job_config(None, JOBS[name])
    spec = run_spec(job, Prepared(num_train_pairs=120, eval="eval pairs"))
    assert spec.steps == step_plan(job, 120)
    assert spec.deepspeed == deepspeed_config_for(job)
    assert spec.tokenizer == tokenizer_spec(job)
    for world_size in (1, 2, 3):
        assert spec.reward_config_kwargs("/tmp/rank0", world_size, spec.deepspeed) == \
            old_worker_kwargs(job, "/tmp/rank0", 120, world_size)
    if name == "elastic":
        # 3 workers x 4 pairs x 2 micro-batches: one worker accumulates 6 micro-batches.
        assert spec.feed.global_batch == 24
        assert spec.reward_config_kwargs("out", 1, spec.deepspeed)["gradient_accumulation_steps"] == 6
        assert spec.lora is None and spec.checkpoints.manifest.adapters is None and spec.zero_stage == 3
    else:
        assert spec.feed.global_batch is None and spec.zero_stage == 2
        assert spec.lora == LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj"))
        assert spec.model.attn_implementation == "eager"
        # The checkpoint manifest records what export needs, not the training kernel.
        assert spec.checkpoints.manifest == CheckpointManifest(
            replace(spec.model, attn_implementation=None), tokenizer_spec(job), spec.lora)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_the_spec_needs_use_gpu_decided():
    job = load_job_config(None, ["scaling.use_gpu=auto"])
    with pytest.raises(ValueError, match="scaling.use_gpu: got 'auto'"):
        run_spec(job, Prepared(num_train_pairs=100))


class Shards:
    """``ray.train.get_dataset_shard`` stand-in recording which shards were asked for."""

    def __init__(self):
        self.asked = []

    def __call__(self, name):
        self.asked.append(name)
        return f"{name} shard"


@pytest.mark.parametrize("name", sorted(JOBS))
def test_one_helper_builds_both_streams_from_the_feed(name):
    job = load_job_config(None, JOBS[name])
    feed = run_spec(job, Prepared(num_train_pairs=120, eval="eval pairs")).feed
    shards, packing = Shards(), PackingMode(padding_free=True)
    train, evaluation = batch_streams(feed, shards, 0, packing, rank=1, world_size=2)
    assert shards.asked == ["train", "eval"]
    assert train.shard == "train shard" and train.batch_size == feed.train_batch_size and train.epochs is None
    assert evaluation.shard == "eval shard" and evaluation.epochs == 1
    assert evaluation.batch_size == job.train["per_device_eval_batch_size"]
    assert evaluation.options == {"shuffle": "none"}
    if name == "elastic":
        assert type(train) is GlobalBatchStream
        assert (train.global_batch, train.rank, train.world_size, train.shuffle) == (24, 1, 2, "none")
        assert train.accumulation == feed.accumulation(2) == 3
        assert type(train.collators[0]) is PackedPairCollator  # (pairs collator, groups collator)
    else:
        assert type(train) is BatchStream
        assert train.options == {"shuffle": job.data.shuffle, "shuffle_buffer_size": job.data.shuffle_buffer_size,
                                 "seed": job.data.seed, "packing": packing,
                                 "length_group_batches": job.train["length_group_batches"]}
    no_eval = run_spec(job, Prepared(num_train_pairs=120)).feed
    shards = Shards()
    assert batch_streams(no_eval, shards, 0, None, rank=0, world_size=1)[1] is None
    assert shards.asked == ["train"]  # Ray raises KeyError for a shard it was not given


# -- the checkpoint manifest ---------------------------------------------------------

MANIFEST = CheckpointManifest(
    BaseModelSpec("builtin:tiny-llama", dtype="float32"),
    TokenizerSpec("builtin:tiny-llama", eos_token="<unk>", pad_token="<unk>"),
    LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
)


def test_the_manifest_round_trips(tmp_path):
    for manifest in (MANIFEST, replace(MANIFEST, adapters=None)):
        path = write_manifest(str(tmp_path), manifest)
        assert path == str(tmp_path / MANIFEST_FILE)
        assert read_manifest(str(tmp_path)) == manifest
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert set(data) == {"format", "base_model", "tokenizer", "adapters"}
    assert set(data["base_model"]) == {"name_or_path", "revision", "dtype", "trust_remote_code"}
    assert read_manifest(str(tmp_path / "nothing")) is None


def test_a_manifest_from_a_newer_rayreward_or_broken_says_so(tmp_path):
    newer = {**MANIFEST.to_dict(), "format": 99}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=r"rayreward_manifest.json: format got 99; expected 1 or lower"):
        read_manifest(str(tmp_path))
    broken = {k: v for k, v in MANIFEST.to_dict().items() if k != "tokenizer"}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"rayreward_manifest.json: KeyError\('tokenizer'\)"):
        read_manifest(str(tmp_path))


def rewards(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, 0]


@pytest.fixture(scope="module")
def adapter_checkpoint(tmp_path_factory):
    """A LoRA checkpoint folder (adapter files only: no tokenizer), and the rewards of its model."""
    torch.manual_seed(0)
    model = wrap_peft(load_base_model(MANIFEST.base_model), peft_config_for(MANIFEST.adapters))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:  # the adapters (lora_B starts at zero) and the head's copy
                param.add_(torch.randn_like(param) * 0.1)
    folder = tmp_path_factory.mktemp("checkpoint-000010")
    model.save_pretrained(str(folder))
    # Only the manifest can name the base: the adapter's own record is no model.
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "no/such-model"}))
    ids = torch.randint(5, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    return folder, ids, rewards(model, ids)


def test_a_checkpoint_with_only_the_manifest_exports(tmp_path, adapter_checkpoint):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, ids, expected = adapter_checkpoint
    write_manifest(str(folder), MANIFEST)
    try:
        out = export_checkpoint(str(folder), str(tmp_path / "model"))
    finally:
        (folder / MANIFEST_FILE).unlink()
    exported = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(rewards(exported, ids), expected)
    # The tokenizer is the manifest's: its EOS and pad token settings applied.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<unk>", "<unk>")


def test_a_checkpoint_of_an_older_run_still_exports(tmp_path, adapter_checkpoint):
    folder, ids, expected = adapter_checkpoint
    # The job config rayreward 0.1.0 wrote into each checkpoint before the manifest.
    old_job = {"model": {"name_or_path": "builtin:tiny-llama", "revision": None, "dtype": "float32",
                         "attn_implementation": None, "trust_remote_code": False},
               "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
               "data": {"chat_template": None}, "train": {"eos_token": "<unk>", "pad_token": "<unk>"},
               "scaling": {"num_workers": 2}, "storage": {"path": "runs"}}
    (folder / LEGACY_JOB_FILE).write_text(json.dumps(old_job))
    try:
        assert read_manifest(str(folder)) == MANIFEST
        out = export_checkpoint(str(folder), str(tmp_path / "model"))
    finally:
        (folder / LEGACY_JOB_FILE).unlink()
    from transformers import AutoModelForSequenceClassification

    torch.testing.assert_close(rewards(AutoModelForSequenceClassification.from_pretrained(out), ids), expected)


def test_a_multi_attribute_adapter_exports_its_head_from_the_manifest(tmp_path):
    from transformers import AutoModelForSequenceClassification

    # An adapter carries no model config: the head's size and attributes are the manifest's.
    head = {"attributes": ["helpful", "polite", "brief"], "weights": [0.5, 0.3, 0.2], "mean": [2.0, 0.5, 0.5],
            "std": [1.5, 0.25, 0.5]}
    manifest = replace(MANIFEST, head=head)
    torch.manual_seed(0)
    model = wrap_peft(load_base_model(manifest.base_model, num_labels=3), peft_config_for(manifest.adapters))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    folder = tmp_path / "checkpoint-000004"
    model.save_pretrained(str(folder))
    write_manifest(str(folder), manifest)
    assert read_manifest(str(folder)) == manifest
    assert json.loads((folder / MANIFEST_FILE).read_text())["head"] == head
    ids = torch.randint(5, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    exported = AutoModelForSequenceClassification.from_pretrained(export_checkpoint(str(folder), str(tmp_path / "m")))
    assert exported.config.num_labels == 3 and exported.config.rayreward_attributes == head["attributes"]
    assert exported.config.rayreward_attribute_weights == head["weights"]
    assert (exported.config.rayreward_attribute_mean, exported.config.rayreward_attribute_std) == (head["mean"],
                                                                                                   head["std"])
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(input_ids=ids).logits, expected)


def test_a_pretrained_models_new_head_is_seeded_as_the_in_process_trainer_seeds_it(minilm_dir, tmp_path):
    # MiniLM has no reward head: each load draws a new one. A run's worker loads it with
    # train.seed (load_base_model(..., seed=)), the in-process trainer by id after
    # seeding with args.seed: the same head, so a run is repeatable and both paths agree.
    from rayreward.core.config import RewardConfig
    from rayreward.core.loading import model_and_tokenizer

    spec = BaseModelSpec(str(minilm_dir))
    head = load_base_model(spec, seed=7).classifier.weight
    assert torch.equal(load_base_model(spec, seed=7).classifier.weight, head)
    assert not torch.equal(load_base_model(spec, seed=8).classifier.weight, head)
    args = RewardConfig(output_dir=str(tmp_path), seed=7, report_to=[], use_cpu=True)
    in_process, _, _ = model_and_tokenizer(str(minilm_dir), None, None, args)
    assert torch.equal(in_process.classifier.weight, head)
