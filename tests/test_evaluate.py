"""``rayreward evaluate``: metrics, calibration, report files, and runs on trained models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rayreward.core.metrics import (
    accuracy_by,
    calibration,
    evaluation_metrics,
    format_headline,
    headline_metrics,
    length_buckets,
    preference_probability,
)

from conftest import SAMPLE_DATA, read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def direct_calibration(chosen, rejected, n_bins):
    """ECE and per-bin numbers computed the plain way, pair by pair."""
    bins = [[] for _ in range(n_bins)]
    for c, r in zip(chosen, rejected):
        d = float(c) - float(r)
        conf = 1.0 / (1.0 + np.exp(-abs(d)))
        b = min(int((conf - 0.5) * 2 * n_bins), n_bins - 1)
        bins[b].append((conf, d > 0))
    ece = sum(len(m) / len(chosen) * abs(np.mean([ok for _, ok in m]) - np.mean([p for p, _ in m])) for m in bins if m)
    return ece, [(len(m), np.mean([p for p, _ in m]) if m else None, np.mean([ok for _, ok in m]) if m else None) for m in bins]


def assert_calibration_matches(cal, chosen, rejected, n_bins):
    ece, bins = direct_calibration(chosen, rejected, n_bins)
    assert cal["ece"] == pytest.approx(ece, abs=1e-12)
    for got, (count, conf, acc) in zip(cal["bins"], bins):
        assert got["count"] == count
        if count:
            assert got["confidence"] == pytest.approx(conf, abs=1e-12)
            assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
        else:
            assert got["confidence"] is None and got["accuracy"] is None


def assert_valid_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# -- pure metrics ----------------------------------------------------------------------


def test_calibration_matches_direct_computation():
    rng = np.random.default_rng(0)
    chosen = rng.normal(1.0, 2.0, 500)
    rejected = rng.normal(0.0, 2.0, 500)
    for n_bins in (1, 5, 10, 20):
        assert_calibration_matches(calibration(chosen, rejected, n_bins), chosen, rejected, n_bins)


def test_calibration_by_hand():
    # Margins 2 and -2: both pairs at confidence sigmoid(2) = 0.8808, one right.
    cal = calibration([2.0, 0.0], [0.0, 2.0], n_bins=2)
    assert cal["bins"][0]["count"] == 0
    assert cal["bins"][1] == {"low": 0.75, "high": 1.0, "count": 2, "confidence": pytest.approx(0.880797, abs=1e-6),
                              "accuracy": 0.5}
    assert cal["ece"] == pytest.approx(0.880797 - 0.5, abs=1e-6)
    # A perfectly calibrated case: confidence 0.75 and three of four right.
    d = np.log(3.0)
    cal = calibration([d, d, d, 0.0], [0.0, 0.0, 0.0, d], n_bins=5)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ties_are_wrong_and_headline():
    m = headline_metrics([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 1.0])
    assert m == {"accuracy": 0.5, "mean_margin": pytest.approx(0.625), "ece": pytest.approx(m["ece"]), "pairs": 4}
    # The tie sits in the lowest bin at confidence 0.5, counted wrong.
    assert calibration([2.0], [2.0])["bins"][0] == {"low": 0.5, "high": 0.55, "count": 1, "confidence": 0.5, "accuracy": 0.0}
    assert format_headline(m).startswith("accuracy 0.500 | mean margin 0.625 | ECE ")
    with pytest.raises(ValueError, match="no pairs"):
        headline_metrics([], [])
    with pytest.raises(ValueError, match="2 chosen rewards but 1 rejected"):
        headline_metrics([1.0, 2.0], [1.0])


def test_preference_probability_is_stable():
    p = preference_probability(np.array([-1000.0, 0.0, 1000.0, 2.0]))
    assert p.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0 / (1.0 + np.exp(-2.0))])


def test_statistics_by_length_and_group():
    chosen = np.array([1.0, 1.0, 0.0, 2.0, 0.0, 3.0])
    rejected = np.array([0.0, 2.0, 1.0, 0.0, 1.0, 0.0])
    lengths = [10, 10, 20, 30, 40, 40]
    m = evaluation_metrics(chosen, rejected, lengths, ["a", "b", "a", "b", "a", "a"], n_bins=4, n_length_buckets=2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert (m["chosen_mean"], m["rejected_std"]) == (pytest.approx(7 / 6), pytest.approx(np.std(rejected)))
    assert m["log_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-(chosen - rejected)))))
    assert m["brier"] == pytest.approx(np.mean((1 - preference_probability(chosen - rejected)) ** 2))
    assert sum(b["count"] for b in m["calibration_bins"]) == 6
    assert [(r["group"], r["count"], r["accuracy"]) for r in m["by_group"]] == [("a", 4, 0.5), ("b", 2, 0.5)]
    assert [(r["group"], r["count"]) for r in m["by_length"]] == [("10-20 tokens", 3), ("21-40 tokens", 3)]
    assert m["by_length"][0]["accuracy"] == pytest.approx(1 / 3)
    labels, order = length_buckets([5, 5, 5])
    assert labels == ["5 tokens"] * 3 and order == ["5 tokens"]
    assert accuracy_by(["x"], [1.0], [0.0]) == [{"group": "x", "count": 1, "accuracy": 1.0, "mean_margin": 1.0}]


def test_report_files(tmp_path):
    from rayreward.evaluation.report import write_report

    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    metrics = evaluation_metrics(chosen, rejected, rng.integers(5, 80, 200), rng.choice(["x", "y"], 200))
    metrics.update(model="m", data="d.jsonl", format="explicit_prompt", truncated=0, group_column="subset",
                   mean_margin=metrics["margin_mean"])
    paths = write_report(metrics, chosen, rejected, tmp_path / "out")
    for name in ("rewards", "margins", "reliability"):
        assert_valid_png(paths[name])
    assert json.loads(paths["metrics"].read_text())["accuracy"] == metrics["accuracy"]
    report = paths["report"].read_text()
    assert f"| {metrics['accuracy']:.4f} | {metrics['margin_mean']:.4f} | {metrics['ece']:.4f} |" in report
    assert "## Accuracy by subset" in report and "![reliability](reliability_diagram.png)" in report


# -- on trained models, through Ray Data --------------------------------------------------


def _train(tmp_path_factory, name, train_rows, eval_rows, steps, max_length, **config):
    from rayreward import RewardConfig
    from rayreward import RewardTrainer
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=0)
    out = tmp_path_factory.mktemp(name)
    args = RewardConfig(
        output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        learning_rate=3e-3, report_to=[], save_strategy="no", activation_checkpointing=False, use_cpu=True,
        max_length=max_length, disable_tqdm=True, seed=0, **config,
    )
    trainer = RewardTrainer(model=model, args=args, tokenizer=tok, train_dataset=train_rows, eval_dataset=eval_rows)
    trainer.train()
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    return out / "model", trainer


def _forward_rewards(model_dir, rows, text_of):
    """Rewards from the saved model, one text at a time."""
    from rayreward.core.model import load_reward_model
    from rayreward.data.tokenizer import load_tokenizer

    tok, model = load_tokenizer(str(model_dir)), load_reward_model(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for row in rows:
            ids = [tok(text_of(row, side) + tok.eos_token)["input_ids"] for side in ("chosen", "rejected")]
            out.append([model(input_ids=torch.tensor([i])).logits[0, 0].item() for i in ids])
    return np.array(out)


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory):
    """A tiny Llama trained briefly on the sample task (about 0.8 eval accuracy)."""
    keep = ("prompt", "chosen", "rejected")
    train = [{k: r[k] for k in keep} for r in read_jsonl(SAMPLE_DATA / "train.jsonl")]
    evals = [{k: r[k] for k in keep} for r in read_jsonl(SAMPLE_DATA / "eval.jsonl")]
    model_dir, trainer = _train(tmp_path_factory, "sample-model", train, evals, steps=60, max_length=256)
    return model_dir, trainer.evaluate()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_on_sample_task(ray_local, sample_model, tmp_path, capsys):
    from rayreward.commands.cli import main
    from rayreward.evaluation.normalization import load_normalization

    model_dir, trainer_metrics = sample_model
    data = SAMPLE_DATA / "eval.jsonl"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--show", "3",
                 "--save-normalization", "--batch-tokens", "512", "--num-actors", "2", "--cpus-per-actor", "0.5"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())

    # The same accuracy and rewards as the trainer's own evaluation of the same pairs.
    assert 0.7 < metrics["accuracy"] < 1.0
    assert metrics["accuracy"] == pytest.approx(trainer_metrics["eval_accuracy"], abs=1e-9)
    assert metrics["chosen_mean"] == pytest.approx(trainer_metrics["eval_rewards/chosen"], abs=1e-4)
    assert metrics["mean_margin"] == pytest.approx(trainer_metrics["eval_rewards/margin"], abs=1e-4)
    # Calibration equals the direct computation on rewards of the model's own forward pass.
    rows = read_jsonl(data)
    direct = _forward_rewards(model_dir, rows, lambda r, side: r["prompt"] + r[side])
    ece, bins = direct_calibration(direct[:, 0], direct[:, 1], 10)
    assert metrics["ece"] == pytest.approx(ece, abs=1e-5)
    assert [b["count"] for b in metrics["calibration_bins"]] == [b[0] for b in bins]
    assert metrics["pairs"] == 400 and metrics["truncated"] == 0
    # Accuracy by the sample data's 'kind' column, found without being named.
    assert metrics["group_column"] == "kind"
    kinds = {}
    for row, (c, r) in zip(rows, direct):
        kinds.setdefault(row["kind"], []).append(c > r)
    assert {g["group"]: g["accuracy"] for g in metrics["by_group"]} == {k: pytest.approx(np.mean(v)) for k, v in kinds.items()}
    assert sum(b["count"] for b in metrics["by_length"]) == 400
    # Files and printed output.
    for name in ("reward_histogram.png", "margin_histogram.png", "reliability_diagram.png"):
        assert_valid_png(out / name)
    assert "## Calibration" in (out / "report.md").read_text()
    assert "P(chosen)" in printed and f"accuracy {metrics['accuracy']:.3f}" in printed
    first = rows[0]
    assert f"{direct[0, 0]:.3f}" in printed and first["chosen"].split()[-1] in printed
    # Normalization: mean and std of all rewards, stored in the model's config.
    stats = load_normalization(model_dir)
    assert stats.mean == pytest.approx(direct.mean(), abs=1e-5) and stats.std == pytest.approx(direct.std(), abs=1e-5)
    assert stats.source == "eval.jsonl, 400 pairs"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_on_hh_rlhf(ray_local, hh_dir, tmp_path_factory, tmp_path):
    from rayreward.evaluation.evaluate import evaluate

    train = read_jsonl(hh_dir / "train.jsonl", limit=320)
    test_rows = read_jsonl(hh_dir / "test.jsonl")
    model_dir, trainer = _train(tmp_path_factory, "hh-model", train, test_rows, steps=20, max_length=384,
                                length_policy="truncate")
    trainer_metrics = trainer.evaluate()
    result = evaluate(model_dir, str(hh_dir / "test.jsonl"), out_dir=tmp_path / "hh", max_length=384, show=2)
    m = result.metrics
    assert m["pairs"] == len(test_rows) == 400 and m["format"] == "implicit_prompt"
    assert m["truncated"] > 0  # hh conversations are long for this tokenizer; the count is reported
    assert m["accuracy"] == pytest.approx(trainer_metrics["eval_accuracy"], abs=1.5 / 400)
    assert m["mean_margin"] == pytest.approx(trainer_metrics["eval_rewards/margin"], abs=1e-3)
    assert_calibration_matches(calibration(result.rewards_chosen, result.rewards_rejected), result.rewards_chosen,
                               result.rewards_rejected, 10)
    assert sum(b["count"] for b in m["by_length"]) == 400 and "by_group" not in m
    assert_valid_png(tmp_path / "hh" / "reliability_diagram.png")
    assert len(result.samples) == 2 and "Human:" in result.samples["chosen_text"][0]
