"""Any reward model can be judged: ``evaluate``, ``score`` and ``serve`` take a folder, a
hub id with a revision (through a real hub cache on disk), an S3 folder (moto on
127.0.0.1, downloaded once to a cache) and a PEFT adapter folder, and give the rewards
of the same model given as a plain folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rayreward.data.tokenizer import SAMPLE_DATA_DIR
from rayreward.evaluation.model_ref import ModelRef, model_problems, resolve_model
from rayreward.evaluation.scorer import Layout, RewardScorer, detect_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = Layout("pairs", "explicit_prompt")
REPO = "acme/tiny-rm"
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def save_model(path: Path, seed: int) -> Path:
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rewards(model, rows) -> np.ndarray:
    chosen_rejected, _, _ = RewardScorer(model, PAIRS).score_rows(rows)
    return np.array([chosen_rejected["reward_chosen"], chosen_rejected["reward_rejected"]])


@pytest.fixture(scope="module")
def rows():
    from conftest import read_jsonl

    return read_jsonl(SAMPLE_DATA_DIR / "eval.jsonl", limit=24)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    return {"a": save_model(root / "a", 1), "b": save_model(root / "b", 2)}


def write_hub_cache(cache: Path, repo: str, snapshots: dict[str, Path], main: str) -> None:
    """The layout huggingface_hub writes: content-addressed blobs, one folder of links per
    commit, and a ref naming the commit of ``main``."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    for commit, folder in snapshots.items():
        target = repo_dir / "snapshots" / commit
        target.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            data = f.read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (target / f.name).symlink_to(os.path.relpath(blob, target))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(main)


@pytest.fixture
def hub_cache(tmp_path, models, monkeypatch):
    """A hub cache holding acme/tiny-rm at two commits (main: the first), offline.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import, so this
    process's copy of those settings is pointed at the new cache; transformers reads it
    at each lookup.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    write_hub_cache(cache, REPO, {COMMIT_A: models["a"], COMMIT_B: models["b"]}, main=COMMIT_A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# -- a hub id through a local hub cache ---------------------------------------------------


def test_hub_id_and_revision_resolve_through_the_hub_cache(hub_cache, models, rows):
    main = resolve_model(REPO)
    assert main.kind == "hub" and Path(main.path).name == COMMIT_A and main.label == REPO
    at_b = resolve_model(REPO, revision=COMMIT_B)
    assert Path(at_b.path).name == COMMIT_B and at_b.label == f"{REPO}@{COMMIT_B}"
    assert resolve_model(REPO, revision="main").path == main.path
    np.testing.assert_allclose(rewards(main, rows), rewards(models["a"], rows), atol=1e-6)
    np.testing.assert_allclose(rewards(at_b, rows), rewards(models["b"], rows), atol=1e-6)
    assert not np.allclose(rewards(main, rows), rewards(at_b, rows))
    # A machine without this snapshot folder loads by id and revision from its own cache.
    elsewhere = ModelRef(REPO, "hub", "/not/on/this/node", revision=COMMIT_B, hub_id=REPO)
    assert elsewhere.local() == (REPO, {"revision": COMMIT_B})
    np.testing.assert_allclose(rewards(elsewhere, rows), rewards(models["b"], rows), atol=1e-6)

    assert model_problems(REPO) == [] and model_problems(REPO, COMMIT_B) == []
    [missing] = model_problems(REPO, "c" * 40)
    assert missing.startswith(f"--model: got '{REPO}' at revision '{'c' * 40}'") and "HF_HUB_OFFLINE=1" in missing
    config_only = hub_cache.parent / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((models["a"] / "config.json").read_bytes())
    write_hub_cache(hub_cache, "acme/config-only", {COMMIT_A: config_only}, main=COMMIT_A)
    [partial] = model_problems("acme/config-only")
    assert "in the Hugging Face cache" in partial and "but not its weights" in partial
    [other] = model_problems("acme/other-rm", flag="serve.models (--model)")
    assert other.startswith("serve.models (--model): got 'acme/other-rm'") and "`hf download acme/other-rm`" in other


# -- a PEFT adapter folder ----------------------------------------------------------------


def test_peft_adapter_folder_scores_as_its_merged_model(tmp_path, models, rows):
    import shutil

    from datasets import Dataset
    from peft import LoraConfig

    from rayreward import RewardConfig, RewardTrainer

    base = str(models["a"])
    args = RewardConfig(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                        learning_rate=2e-2, save_strategy="no", report_to=[], disable_tqdm=True, seed=0)
    trainer = RewardTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows),
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    adapter = tmp_path / "adapter"
    trainer.save_model(str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base and "score" in config["modules_to_save"]
    # A bare adapter (no tokenizer beside it) reads text with its base model's tokenizer.
    for f in adapter.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    assert sorted(f.name for f in adapter.iterdir() if f.name != "README.md") == [
        "adapter_config.json", "adapter_model.safetensors", "training_args.bin"]
    merged = tmp_path / "merged"
    trainer.model.merge_and_unload().save_pretrained(merged)
    shutil.copy(Path(base) / "tokenizer.json", merged)
    shutil.copy(Path(base) / "tokenizer_config.json", merged)

    assert model_problems(str(adapter)) == []
    ref = resolve_model(str(adapter))
    assert ref.temporary and ref.path != str(adapter)
    got = rewards(ref, rows)
    np.testing.assert_allclose(got, rewards(merged, rows), atol=1e-5)
    assert not np.allclose(got, rewards(models["a"], rows), atol=1e-3)  # the trained head and adapter are used


# -- an object-store folder (moto S3 on loopback) ----------------------------------------


def test_s3_folder_is_downloaded_once_and_again_when_it_changes(moto_s3, models, rows, tmp_path, monkeypatch):
    from rayreward.evaluation.normalization import save_normalization
    from rayreward.runtime.storage import upload_dir

    monkeypatch.setenv("RAYREWARD_CACHE", str(tmp_path / "cache"))
    uri = "s3://rayreward/models/rm"
    upload_dir(str(models["a"]), uri)
    assert model_problems(uri) == []
    ref = resolve_model(uri)
    assert ref.kind == "uri" and ref.path.startswith(str(tmp_path / "cache" / "models"))
    np.testing.assert_allclose(rewards(ref, rows), rewards(models["a"], rows), atol=1e-6)
    weights = Path(ref.path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = resolve_model(uri)
    assert again.path == ref.path and weights.stat().st_mtime_ns == stamp  # reused, not fetched again
    # A rewritten object is a new version: downloaded again, the stale copy removed.
    changed = tmp_path / "changed"
    save_model(changed, 1)
    save_normalization(changed, 0.5, 2.0, source="test")
    upload_dir(str(changed), uri)
    newer = resolve_model(uri)
    assert newer.path != ref.path and not Path(ref.path).exists()
    assert json.loads((Path(newer.path) / "config.json").read_text())["rayreward_reward_mean"] == 0.5
    # Another node (no copy in its cache) downloads the same version.
    elsewhere = ModelRef(uri, "uri", str(tmp_path / "gone"), uri=uri)
    assert elsewhere.local() == (newer.path, {})

    [nothing] = model_problems("s3://rayreward/models/none")
    assert nothing.startswith("--model: got 's3://rayreward/models/none'; nothing there in the object store")
    moto_s3.put_object(Bucket="rayreward", Key="models/notes/readme.txt", Body=b"hello")
    [neither] = model_problems("s3://rayreward/models/notes")
    assert "neither a model (config.json) nor a PEFT adapter (adapter_config.json)" in neither


def test_serve_resolves_uris_hub_ids_and_an_ensemble_in_an_object_store(moto_s3, hub_cache, models, rows, tmp_path,
                                                                      monkeypatch):
    from rayreward.evaluation.ensemble import write_ensemble
    from rayreward.runtime.storage import upload_dir
    from rayreward.serve.engine import RewardEngine, resolve_members

    monkeypatch.setenv("RAYREWARD_CACHE", str(tmp_path / "cache"))
    ensemble = tmp_path / "ens"
    save_model(ensemble / "m0", 1)
    save_model(ensemble / "m1", 2)
    write_ensemble(ensemble, ["m0", "m1"], source="test")
    upload_dir(str(ensemble), "s3://rayreward/ens")
    members = resolve_members(["s3://rayreward/ens"])
    assert [Path(m.path).name for m in members] == ["m0", "m1"]
    texts = [r["prompt"] + r["chosen"] for r in rows[:6]]
    single = detect_layout(["text"], {"text": texts[0]})

    def served(refs):
        engine = RewardEngine(refs)
        from rayreward.serve.requests import parse_get_reward

        encoded = engine.encode(parse_get_reward({"query": texts}))
        return engine.forward(encoded.ids), engine

    raw, engine = served(members)
    for m, folder in enumerate((models["a"], models["b"])):
        want, _, _ = RewardScorer(folder, single).score_rows([{"text": t} for t in texts])
        np.testing.assert_allclose(raw[:, m, 0], want["reward"], atol=1e-6)  # the combined reward
    raw, engine = served(resolve_members([REPO], revision=COMMIT_B))
    want, _, _ = RewardScorer(models["b"], single).score_rows([{"text": t} for t in texts])
    np.testing.assert_allclose(raw[:, 0, 0], want["reward"], atol=1e-6)
    assert engine.info()["members"][0]["model"] == f"{REPO}@{COMMIT_B}"


# -- the commands, end to end on Ray Data --------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_evaluate_by_hub_id_and_revision_on_ray(ray_local, hub_cache, models, rows, tmp_path):
    # Scoring by an s3:// URI on Ray runs in test_score.py's test_score_command_on_ray.
    from rayreward.commands.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "eval"
    assert main(["evaluate", "--model", REPO, "--revision", COMMIT_B, "--data", str(data), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    want = rewards(models["b"], rows)
    assert metrics["model"] == f"{REPO}@{COMMIT_B}" and metrics["pairs"] == len(rows)
    assert metrics["chosen_mean"] == pytest.approx(want[0].mean(), abs=1e-5)
    assert metrics["rejected_mean"] == pytest.approx(want[1].mean(), abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(np.mean(want[0] > want[1])))
