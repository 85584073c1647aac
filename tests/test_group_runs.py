"""End to end on the local Ray: `rayreward train` on ranked groups (Ray Data + Ray Train +
DeepSpeed ZeRO-2, the built-in tiny Llama), then `evaluate` and `score` on its export;
`rayreward train` of a three-attribute model with LoRA on ratings, then `score` and
`evaluate` of its export. Each run's end-of-run summary (`final_*`) is checked against
`evaluate` of the exported model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SAMPLE_DATA, read_jsonl
from data_helpers import write_jsonl
from group_data import THREE, THREE_WEIGHTS, ranked_rows, ratings_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranked_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranked")
    train = write_jsonl(root / "train.jsonl", ranked_rows(read_jsonl(SAMPLE_DATA / "train.jsonl")))
    evaluation = write_jsonl(root / "eval.jsonl", ranked_rows(read_jsonl(SAMPLE_DATA / "eval.jsonl"), seed=1))
    return root, train, evaluation


@pytest.fixture(scope="module")
def ranked_run(ray_local, ranked_files):
    from rayreward.commands.cli import main

    root, train, evaluation = ranked_files
    assert main(["train", f"data.train={train}", f"data.eval={evaluation}", "train.loss_type=plackett_luce",
                 "train.max_steps=8", "train.save_steps=4", "train.eval_steps=4", "train.logging_steps=2",
                 "train.per_device_train_batch_size=8", "data.tokenize_actors=1", f"storage.path={root / 'runs'}",
                 "storage.name=ranked"]) == 0
    return root / "runs" / "ranked"


def _rewards(model_dir, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(model(**tok(text + tok.eos_token, return_tensors="pt")).logits[0].tolist())
    return out


@pytest.mark.timeout(900)
def test_train_evaluate_and_score_ranked_groups(ranked_run, ranked_files, tmp_path):
    from rayreward.commands.cli import main
    from rayreward.core.group_metrics import ranking_metrics
    from rayreward.data.groups import group_scores

    _, _, evaluation = ranked_files
    metrics = json.loads((ranked_run / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["data/train_pairs"] == 120
    assert 0.6 < metrics["eval_pairwise_accuracy"] <= 1 and -1 <= metrics["eval_kendall_tau"] <= 1
    model_dir = ranked_run / "model"

    # evaluate: the metrics of the exported model's own rewards, response by response
    assert main(["evaluate", "--model", str(model_dir), "--data", str(evaluation), "--out", str(tmp_path / "ev"),
                 "--num-actors", "1", "--cpus-per-actor", "0.5"]) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = read_jsonl(evaluation)
    groups = [([r[0] for r in _rewards(model_dir, [row["prompt"] + x for x in row["responses"]])],
               group_scores(row, "ranked")) for row in rows]
    expected = ranking_metrics(groups)
    for key in ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy", "kendall_tau"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
        # The run's own summary: the same model on the same eval groups.
        assert metrics[f"final_{key}"] == pytest.approx(expected[key], abs=1e-5), key
    assert got["groups"] == len(rows) == metrics["final_groups"] and got["pairwise_accuracy"] > 0.6
    assert metrics["final_accuracy"] == metrics["final_pairwise_accuracy"] and metrics["final_loss"] > 0

    # storage.checkpoint_eval=ray's function on the exported (last) checkpoint and the
    # run's tokenized eval groups: the same metrics under the in-loop names, and the
    # run's loss (plackett_luce) on the same rewards.
    import ray.data
    from ray.train import Checkpoint

    from rayreward.core.loss import plackett_luce_loss
    from rayreward.data.groups import GroupEncoder
    from rayreward.data.tokenizer import builtin_tokenizer
    from rayreward.run.final_eval import CheckpointEval

    assert metrics["checkpoint"].endswith("checkpoint-000008")
    encoded = GroupEncoder(builtin_tokenizer(), "ranked").encode_rows(rows)
    checked = CheckpointEval(ray.data.from_items(encoded), False, "groups", "plackett_luce")(
        Checkpoint.from_directory(metrics["checkpoint"]))
    for key in ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy", "kendall_tau", "accuracy", "loss"):
        assert checked[f"eval_{key}"] == pytest.approx(metrics[f"final_{key}"], abs=1e-5), key
    flat = torch.tensor([r for rewards, _ in groups for r in rewards], dtype=torch.float64)
    flat_scores = torch.tensor([s for _, scores in groups for s in scores], dtype=torch.float64)
    index = torch.tensor([g for g, (rewards, _) in enumerate(groups) for _ in rewards])
    assert checked["eval_loss"] == pytest.approx(plackett_luce_loss(flat, flat_scores, index).item(), abs=1e-5)

    # score: one reward per response of each group, in response order
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(model_dir), "--data", str(evaluation), "--out", str(out),
                 "--num-actors", "1", "--cpus-per-actor", "0.5"]) == 0
    scored = read_jsonl(out)
    assert [len(r["rewards"]) for r in scored] == [len(r["responses"]) for r in rows]
    for row, (rewards, _) in zip(scored[:5], groups[:5]):
        assert row["rewards"] == pytest.approx(rewards, abs=1e-5)


def _rated_files(root):
    """Ratings with three attributes (``brevity``: 1 for answers under 100 characters), some missing."""
    def rows(split, limit):
        rated = ratings_rows(read_jsonl(SAMPLE_DATA / f"{split}.jsonl"), seed=len(split))[:limit]
        return [dict(r, brevity=float(len(r["response"]) < 100)) for r in rated]

    return write_jsonl(root / "train.jsonl", rows("train", 200)), write_jsonl(root / "eval.jsonl", rows("eval", 40))


@pytest.mark.timeout(900)
def test_three_attribute_lora_run_scores_and_evaluates_ratings(ray_local, tmp_path, capfd):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from rayreward.commands.cli import main
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    # `rayreward train` on ratings: LoRA adapters, a three-output head, ZeRO-0, one
    # worker; the eval data is scored once, by the exported model at the end.
    train, evaluation = _rated_files(tmp_path)
    assert main(["train", f"data.train={train}", f"data.eval={evaluation}", "train.loss_type=regression",
                 f"train.attributes=[{','.join(THREE)}]", f"train.attribute_weights={THREE_WEIGHTS}",
                 "lora.enabled=true", "deepspeed.stage=0", "scaling.num_workers=1", "train.max_steps=4",
                 "train.save_steps=4", "train.eval_strategy=no", "train.logging_steps=2",
                 "train.per_device_train_batch_size=16", "data.tokenize_actors=1", f"storage.path={tmp_path / 'runs'}",
                 "storage.name=rated"]) == 0
    out = capfd.readouterr().out  # the console writes to the terminal's file descriptor
    run = tmp_path / "runs" / "rated"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["data/train_pairs"] == 200
    assert "[rayreward] exported model on the eval rated responses: helpfulness RMSE " in out

    # The export: LoRA merged into a plain model that records its attributes and weights.
    model_dir = run / "model"
    assert not (model_dir / "adapter_config.json").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert loaded.config.num_labels == 3 and loaded.config.rayreward_attributes == THREE
    assert loaded.config.rayreward_attribute_weights == THREE_WEIGHTS
    assert loaded.config.id2label == {i: n for i, n in enumerate(THREE)}
    # The head was trained and saved, the adapters merged, the frozen base left alone
    # (the run's model is the built-in one: same seed, same initial weights).
    initial = tiny.build_model("tiny-llama", builtin_tokenizer(), num_labels=3).state_dict()
    exported = load_file(str(model_dir / "model.safetensors"))
    assert not torch.allclose(exported["score.weight"], initial["score.weight"])
    assert not torch.allclose(exported["model.layers.0.self_attn.q_proj.weight"],
                              initial["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(exported["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])

    # score: each attribute and their weighted sum, as the plain model gives them.
    rows = read_jsonl(evaluation)
    out_file = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(model_dir), "--data", str(evaluation), "--out", str(out_file),
                 "--num-actors", "1", "--cpus-per-actor", "0.5"]) == 0
    scored = read_jsonl(out_file)
    direct = _rewards(model_dir, [r["prompt"] + r["response"] for r in rows[:3]])
    for row, values in zip(scored, direct):
        assert [row[f"reward_{n}"] for n in THREE] == pytest.approx(values, abs=1e-5)
        assert row["reward"] == pytest.approx(sum(w * v for w, v in zip(THREE_WEIGHTS, values)), abs=1e-5)
    # evaluate: per-attribute RMSE over the rated rows; the run's summary says the same.
    assert main(["evaluate", "--model", str(model_dir), "--data", str(evaluation), "--out", str(tmp_path / "ev"),
                 "--num-actors", "1", "--cpus-per-actor", "0.5"]) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())["attributes"]
    for a, name in enumerate(THREE):
        rated = [(r[f"reward_{name}"], row[name]) for r, row in zip(scored, rows) if row[name] is not None]
        rmse = math.sqrt(sum((p - y) ** 2 for p, y in rated) / len(rated))
        assert got[name]["rated"] == len(rated) and got[name]["rmse"] == pytest.approx(rmse, abs=1e-6)
        for key in ("rmse", "pearson", "spearman"):
            assert metrics[f"final_{name}/{key}"] == pytest.approx(got[name][key], abs=1e-5, nan_ok=True), (name, key)
    assert metrics["final_rated_rows"] == len(rows) and metrics["final_loss"] > 0
