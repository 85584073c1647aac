"""Rankings of K responses, chosen/rejected lists and ratings: detection, row checks,
encoding, and the group losses against direct unbatched computations of their definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from group_data import ranked_rows, ratings_rows
from rayreward.core.loss import (
    group_bradley_terry_loss,
    pairwise_loss,
    plackett_luce_loss,
    regression_loss,
)
from rayreward.data.formats import DataFormatError, PairEncoder
from rayreward.data.groups import (
    GroupEncoder,
    check_attribute_columns,
    detect_group_format,
    group_row_problem,
    group_scores,
)

PROMPT = "Human: How do I boil an egg?\nAssistant:"
A, B, C = " Boil it for eight minutes.", " Go away.", " Eggs are round."


def test_detection_of_each_shape_and_pairs_untouched():
    assert detect_group_format(["prompt", "responses", "ranking"], None) == "ranked"
    assert detect_group_format(["prompt", "response", "helpful"], None) == "ratings"
    assert detect_group_format(["prompt", "chosen", "rejected"], {"chosen": [A, C], "rejected": [B]}) == "ranked_lists"
    conv = [[{"role": "assistant", "content": "x"}]]
    assert detect_group_format(["chosen", "rejected"], {"chosen": conv, "rejected": conv}) == "ranked_lists"
    # pairs stay pairs: text, and one conversation per side
    assert detect_group_format(["prompt", "chosen", "rejected"], {"chosen": A, "rejected": B}) is None
    assert detect_group_format(["chosen", "rejected"], {"chosen": conv[0], "rejected": conv[0]}) is None


def test_ratings_need_their_attribute_columns():
    with pytest.raises(DataFormatError, match="needs the names of the rated attributes"):
        check_attribute_columns(["prompt", "response", "helpful"], None, "train.jsonl")
    with pytest.raises(DataFormatError, match="'honest' named in attributes are not in the data"):
        check_attribute_columns(["prompt", "response", "helpful"], ["helpful", "honest"], "train.jsonl")


@pytest.mark.parametrize(
    "fmt, row, field, expected",
    [
        ("ranked", {"prompt": PROMPT, "responses": [A]}, "responses", "K = 1 ranks nothing"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "ranking": [0, 0]}, "ranking", "not a permutation of 0..1"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "ranking": [1, 2]}, "ranking", "not a permutation"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B, C], "ranking": [0, 1]}, "ranking", "2 entries for 3 responses"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "scores": [1.0, "high"]}, "scores", "score 1 must be a number, got str"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "scores": [1.0, math.nan]}, "scores", "finite"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "scores": [1.0]}, "scores", "1 entries for 2 responses"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "scores": [2, 2]}, "scores", "prefers nothing"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B]}, "ranking", "needs 'ranking'"),
        ("ranked", {"prompt": PROMPT, "responses": [A, B], "ranking": [0, 1], "scores": [1, 0]}, "ranking", "give one of them"),
        ("ranked", {"prompt": PROMPT, "responses": [A, "  "], "scores": [1, 0]}, "responses", "response 1: empty text"),
        ("ranked", {"prompt": 3, "responses": [A, B], "scores": [1, 0]}, "prompt", "expected a string"),
        ("ranked_lists", {"prompt": PROMPT, "chosen": [A], "rejected": []}, "rejected", "at least one response"),
        ("ranked_lists", {"prompt": PROMPT, "chosen": [A, 5], "rejected": [B]}, "chosen", "response 1: expected a string"),
        ("ratings", {"prompt": PROMPT, "response": A, "helpful": "4", "polite": None}, "helpful", "must be a number, got str"),
        ("ratings", {"prompt": PROMPT, "response": A, "helpful": None, "polite": math.nan}, "helpful", "no attribute rated"),
        ("ratings", {"prompt": PROMPT, "response": "", "helpful": 1.0}, "response", "empty text"),
    ],
)
def test_bad_rows_name_the_field(fmt, row, field, expected):
    got = group_row_problem(row, fmt, attributes=["helpful", "polite"])
    assert got is not None, row
    assert got[0] == field and expected in got[1], got


def test_good_rows_pass_and_scores_follow_the_ranking():
    ranked = {"prompt": PROMPT, "responses": [A, B, C], "ranking": [2, 0, 1]}
    assert group_row_problem(ranked, "ranked") is None
    assert group_scores(ranked, "ranked") == [2.0, 1.0, 3.0]  # C best, then A, then B
    lists = {"prompt": PROMPT, "chosen": [A], "rejected": [B, C]}
    assert group_row_problem(lists, "ranked_lists") is None
    assert group_scores(lists, "ranked_lists") == [1.0, 0.0, 0.0]
    assert group_row_problem({"prompt": PROMPT, "response": A, "helpful": 3, "polite": None}, "ratings",
                             attributes=["helpful", "polite"]) is None


def test_group_ids_are_the_pair_sides_ids(tokenizer):
    pair = PairEncoder(tokenizer, "explicit_prompt").encode_rows([{"prompt": PROMPT, "chosen": A, "rejected": B}])[0]
    group = GroupEncoder(tokenizer, "ranked").encode_rows([{"prompt": PROMPT, "responses": [A, B], "ranking": [0, 1]}])[0]
    assert group["input_ids_responses"] == [pair["input_ids_chosen"], pair["input_ids_rejected"]]
    assert group["scores"] == [2.0, 1.0]
    lists = GroupEncoder(tokenizer, "ranked_lists").encode_rows([{"prompt": PROMPT, "chosen": [A], "rejected": [B]}])[0]
    assert lists["input_ids_responses"] == group["input_ids_responses"]
    rated = GroupEncoder(tokenizer, "ratings", attributes=["helpful", "polite"]).encode_rows(
        [{"prompt": PROMPT, "response": A, "helpful": 3, "polite": None}])[0]
    assert rated["input_ids"] == pair["input_ids_chosen"]
    assert rated["labels"][0] == 3.0 and math.isnan(rated["labels"][1])


def test_conversational_groups_use_the_chat_template(tokenizer):
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    answers = [[{"role": "assistant", "content": A.strip()}], [{"role": "assistant", "content": B.strip()}]]
    pair = PairEncoder(tokenizer, "conversational").encode_rows(
        [{"prompt": prompt, "chosen": answers[0], "rejected": answers[1]}])[0]
    row = {"prompt": prompt, "responses": answers, "scores": [1, 0]}
    assert group_row_problem(row, "ranked") is None
    group = GroupEncoder(tokenizer, "ranked").encode_rows([row])[0]
    assert group["input_ids_responses"] == [pair["input_ids_chosen"], pair["input_ids_rejected"]]


def test_length_policy_on_groups_is_counted(tokenizer):
    rows = [{"prompt": PROMPT, "responses": [A, B], "scores": [1, 0]}, {"prompt": "", "responses": ["Yes.", "No."], "scores": [1, 0]}]
    enc = GroupEncoder(tokenizer, "ranked", max_length=8)
    out = enc.encode_rows(rows)
    assert out[0] is None and out[1] is not None
    assert (enc.stats.pairs, enc.stats.filtered) == (2, 1)
    trunc = GroupEncoder(tokenizer, "ranked", max_length=8, length_policy="truncate")
    out = trunc.encode_rows(rows)
    assert all(len(s) <= 8 for s in out[0]["input_ids_responses"]) and trunc.stats.truncated == 1
    assert out[0]["input_ids_responses"][0][-1] == tokenizer.eos_token_id


def test_the_sample_builders_give_the_promised_sets():
    from conftest import SAMPLE_DATA, read_jsonl

    pairs = read_jsonl(SAMPLE_DATA / "train.jsonl")
    ranked = ranked_rows(pairs)
    ks = {len(r["responses"]) for r in ranked}
    assert ks == {2, 3, 4, 5}
    assert any(r["scores"] and len(set(r["scores"])) < len(r["scores"]) for r in ranked)  # ties
    assert any(r["ranking"] for r in ranked)
    assert all(group_row_problem(r, "ranked") is None for r in ranked)
    rated = ratings_rows(pairs)
    assert any(r["helpfulness"] is None for r in rated) and any(r["politeness"] is None for r in rated)
    assert all(group_row_problem(r, "ratings", attributes=["helpfulness", "politeness"]) is None for r in rated)


# -- losses against their definitions, one group at a time ----------------------------

def _groups(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [2, 3, 5, 4]
    scores = [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0, 0.0]), torch.tensor([4.0, 1.0, 1.0, 3.0, 0.0]),
              torch.tensor([1.0, 0.0, 1.0, 0.0])]
    rewards = [torch.randn(k, generator=g, dtype=torch.float64) for k in sizes]
    return rewards, scores


def _flat(rewards, scores):
    index = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rewards)])
    return torch.cat(rewards), torch.cat(scores).to(torch.float64), index


def test_bradley_terry_over_all_pairs_is_the_expanded_pairs_loss():
    rewards, scores = _groups()
    terms = []
    for r, s in zip(rewards, scores):
        for i, j in itertools.permutations(range(len(r)), 2):
            if s[i] > s[j]:
                terms.append(-torch.log(1 / (1 + torch.exp(-(r[i] - r[j])))))
    expected = torch.stack(terms).mean()
    got = group_bradley_terry_loss(*_flat(rewards, scores))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_plackett_luce_is_the_breslow_likelihood_of_each_order():
    rewards, scores = _groups()
    per_group = []
    for r, s in zip(rewards, scores):
        nll = torch.zeros((), dtype=torch.float64)
        for i in range(len(r)):
            if not any(s[i] > s[j] for j in range(len(r))):
                continue  # the last tier beats nothing
            pool = [j for j in range(len(r)) if s[j] <= s[i]]
            nll = nll - (r[i] - torch.log(sum(torch.exp(r[j]) for j in pool)))
        per_group.append(nll)
    expected = torch.stack(per_group).mean()
    got = plackett_luce_loss(*_flat(rewards, scores))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_plackett_luce_without_ties_is_the_sequential_choice_likelihood():
    r = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64)
    order = [2, 3, 0, 1]  # best first
    s = torch.tensor([2.0, 1.0, 4.0, 3.0], dtype=torch.float64)
    nll = sum(-(r[order[p]] - torch.logsumexp(r[order[p:]], 0)) for p in range(len(order)))
    got = plackett_luce_loss(r, s, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(got, nll, rtol=1e-12, atol=1e-12)


def test_a_ranking_of_two_is_the_pair_loss():
    g = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(6, generator=g), torch.randn(6, generator=g)
    rewards = torch.stack([chosen, rejected], 1).reshape(-1)  # chosen, rejected of each group
    scores = torch.tensor([1.0, 0.0]).repeat(6)
    index = torch.arange(6).repeat_interleave(2)
    pair = pairwise_loss(chosen, rejected)
    assert torch.equal(group_bradley_terry_loss(rewards, scores, index), pair)  # exactly
    torch.testing.assert_close(plackett_luce_loss(rewards, scores, index), pair, rtol=1e-6, atol=0)
    centred = pairwise_loss(chosen, rejected, center_rewards_coefficient=0.01)
    assert torch.equal(group_bradley_terry_loss(rewards, scores, index, 0.01), centred)


def test_group_losses_need_a_preference():
    with pytest.raises(ValueError, match="tied"):
        group_bradley_terry_loss(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tied"):
        plackett_luce_loss(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long))


def test_regression_masks_missing_labels_and_standardises():
    pred = torch.tensor([[1.0, 0.5], [2.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[3.0, math.nan], [1.0, 1.0], [math.nan, 2.0]], dtype=torch.float64)
    cells = [(0, 0), (1, 0), (1, 1), (2, 1)]
    expected = sum((pred[i, j] - labels[i, j]) ** 2 for i, j in cells) / 4
    torch.testing.assert_close(regression_loss(pred, labels), expected)
    mean, std = torch.tensor([2.0, 1.5]), torch.tensor([1.0, 0.5])
    expected = sum((pred[i, j] - (labels[i, j] - mean[j]) / std[j]) ** 2 for i, j in cells) / 4
    torch.testing.assert_close(regression_loss(pred, labels, mean, std), expected)
    weights = torch.tensor([1.0, 3.0])
    expected = sum(weights[j] * (pred[i, j] - labels[i, j]) ** 2 for i, j in cells) / (1 + 1 + 3 + 3)
    torch.testing.assert_close(regression_loss(pred, labels, weights=weights), expected)
    grad_pred = pred.clone().requires_grad_()
    regression_loss(grad_pred, labels).backward()
    assert grad_pred.grad[0, 1] == 0 and grad_pred.grad[2, 0] == 0  # unrated cells get no gradient
    assert not torch.isnan(grad_pred.grad).any()


def test_job_config_checks_loss_type_and_tune_can_sweep_it(tmp_path):
    from rayreward.job.config import load_job_config

    with pytest.raises(ValueError, match="loss_type"):
        load_job_config(None, ["train.loss_type=listwise"])
    job = load_job_config(None, ["train.loss_type=plackett_luce", "data.format=ranked"])
    assert job.train["loss_type"] == "plackett_luce" and job.data.format == "ranked"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("tune:\n  metric: eval_best_of_k_accuracy\n  mode: max\n  num_samples: 2\n  search_space:\n"
                     "    train.loss_type:\n      choice: [bradley_terry, plackett_luce]\n")
    job = load_job_config(str(sweep), [])
    assert job.tune.search_space["train.loss_type"] == {"choice": ["bradley_terry", "plackett_luce"]}


def test_files_are_read_and_checked_row_by_row_before_ray(tmp_path):
    """The reader of `rayreward train`: a bad group row names file, line and field; CSV ratings' empty cells are missing."""
    import json

    from rayreward.data.formats import BadRowError, ColumnNames
    from rayreward.data.reader import ReadSpec, probe, read_rows
    from rayreward.data.sources import resolve_source

    path = tmp_path / "ranked.jsonl"
    good = {"prompt": PROMPT, "responses": [A, B, C], "scores": [2, 1, 1]}
    path.write_text("\n".join(json.dumps(r) for r in [good, dict(good, scores=None, ranking=[0, 2, 2])]) + "\n")
    source = resolve_source(str(path), "data.train", role="train")
    with pytest.raises(BadRowError, match=r"ranked.jsonl, row 2, field 'ranking'.*not a permutation"):
        probe(source, "auto", ColumnNames(), "error")
    fmt, _, _, samples = probe(source, "auto", ColumnNames(), "skip")
    assert fmt == "ranked" and len(samples) == 1 and json.loads(samples[0]["_group"])["scores"] == [2, 1, 1]
    rows = list(read_rows(ReadSpec(source, fmt, ColumnNames(), False, False), source.files[0]))
    assert [r["_problem"] is None for r in rows] == [True, False] and rows[1]["_field"] == "ranking"

    csv = tmp_path / "ratings.csv"
    csv.write_text('prompt,response,helpful,polite\n"Q?"," A.",4,\n"Q?"," B.",,x\n')
    source = resolve_source(str(csv), "data.train", role="train")
    with pytest.raises(DataFormatError, match="needs the names of the rated attributes"):
        probe(source, "auto", ColumnNames(), "error")
    fmt, _, _, _ = probe(source, "auto", ColumnNames(), "skip", attributes=("helpful", "polite"))
    plan = ReadSpec(source, fmt, ColumnNames(), False, False, attributes=("helpful", "polite"))
    first, second = read_rows(plan, source.files[0])
    assert json.loads(first["_group"]) == {"prompt": "Q?", "response": " A.", "helpful": 4.0, "polite": None}
    assert second["_field"] == "polite" and "must be a number, got str" in second["_problem"]


def test_check_reports_shape_and_loss_mismatch_before_ray(tmp_path):
    import json

    from rayreward.job.config import load_job_config
    from rayreward.checks.job import check_job

    data = tmp_path / "ratings.jsonl"
    data.write_text(json.dumps({"prompt": PROMPT, "response": A, "helpful": 3.0, "polite": None}) + "\n")
    common = [f"data.train={data}", f"storage.path={tmp_path / 'runs'}"]
    found = check_job(load_job_config(None, common))
    assert any("needs the names of the rated attributes" in p for p in found.problems), found.problems
    found = check_job(load_job_config(None, common + ["train.attributes=[helpful,polite]"]))
    assert f"data.train: got ratings data with train.loss_type='bradley_terry'; expected train.loss_type " \
        "regression for ratings data" in found.problems, found.problems
    rated = common + ["train.attributes=[helpful,polite]", "train.loss_type=regression"]
    found = check_job(load_job_config(None, rated))
    assert found.problems == []
    rated += [f"data.eval={data}"]
    # Checkpoints (and a sweep's trials) ranked by a metric ratings never report.
    found = check_job(load_job_config(None, rated + ["storage.checkpoint_score_attribute=eval_accuracy"]),
                      search_space={"train.learning_rate": {"choice": [1e-3]}})
    assert found.problems == [
        "storage.checkpoint_score_attribute: got 'eval_accuracy', which the evaluation of ratings data does not "
        "report; expected one of eval_loss, eval_rmse, eval_pearson, eval_spearman, eval_helpful/rmse, "
        "eval_helpful/pearson, eval_helpful/spearman, eval_polite/rmse, eval_polite/pearson, eval_polite/spearman",
        "tune.metric: got 'eval_accuracy', which the evaluation of ratings data does not report; expected one of "
        "eval_loss, eval_rmse, eval_pearson, eval_spearman, eval_helpful/rmse, eval_helpful/pearson, "
        "eval_helpful/spearman, eval_polite/rmse, eval_polite/pearson, eval_polite/spearman"], found.problems
    ok = load_job_config(None, rated + ["storage.checkpoint_score_attribute=eval_polite/rmse",
                                        "storage.checkpoint_score_order=min", "tune.metric=eval_rmse", "tune.mode=min"])
    assert check_job(ok, search_space={"train.learning_rate": {"choice": [1e-3]}}).problems == []


def test_end_of_run_metrics_and_loss_of_each_shape():
    import numpy as np

    from rayreward.core.attributes import AttributeSpec
    from rayreward.core.group_metrics import ranking_metrics
    from rayreward.run.eval_scores import EvalScores, eval_loss, eval_metrics, summary_line

    # Ranked groups: the ranking metrics, and the run's loss_type on the rewards.
    groups = [([2.0, 1.0, 0.5], [2.0, 0.0, 0.0]), ([0.0, 1.0], [1.0, 0.0]), ([1.0, 3.0, 2.0, 0.0], [3.0, 2.0, 1.0, 0.0])]
    scores = EvalScores("groups", groups=groups)
    m = eval_metrics(scores)
    expected = ranking_metrics(groups)
    assert m == {**{k: expected[k] for k in ("top1_accuracy", "best_of_k_accuracy", "pairwise_accuracy",
                                              "kendall_tau", "groups")}, "accuracy": expected["pairwise_accuracy"]}
    rewards = torch.tensor([r for g, _ in groups for r in g], dtype=torch.float64)
    targets = torch.tensor([s for _, g in groups for s in g], dtype=torch.float64)
    index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert eval_loss(scores, "plackett_luce") == pytest.approx(
        plackett_luce_loss(rewards, targets, index).item(), abs=1e-9)
    assert eval_loss(scores, "bradley_terry") == pytest.approx(
        group_bradley_terry_loss(rewards, targets, index).item(), abs=1e-9)
    assert list(scores.rewards()) == rewards.tolist()
    assert summary_line({f"final_{k}": v for k, v in m.items()}) == (
        f"top-1 {m['top1_accuracy']:.3f} | best-of-K {m['best_of_k_accuracy']:.3f} | pairwise "
        f"{m['pairwise_accuracy']:.3f} | Kendall tau {m['kendall_tau']:.3f} (3 groups)")

    # Ratings: per-attribute metrics over the rated cells; the loss in the head's
    # standard units when the model was trained on standardised targets.
    values = np.array([[4.0, 1.0], [1.0, 0.0], [2.5, 0.5]])
    labels = np.array([[4.0, np.nan], [0.0, 0.0], [2.0, 1.0]])
    spec = AttributeSpec(("help", "polite"), (0.5, 0.5), mean=(2.0, 0.5), std=(2.0, 0.25))
    rated = EvalScores("ratings", values=values, labels=labels, names=spec.names, spec=spec)
    m = eval_metrics(rated)
    assert m["help/rmse"] == pytest.approx(math.sqrt((0 + 1 + 0.25) / 3))
    assert m["polite/rmse"] == pytest.approx(math.sqrt((0 + 0.25) / 2)) and m["rated_rows"] == 3
    cells = [((4 - 4) / 2.0) ** 2, ((1 - 0) / 2.0) ** 2, ((0 - 0) / 0.25) ** 2, ((2.5 - 2) / 2.0) ** 2,
             ((0.5 - 1) / 0.25) ** 2]
    assert eval_loss(rated, "regression") == pytest.approx(sum(cells) / 5)
    assert rated.rewards() is None
    assert summary_line({f"final_{k}": v for k, v in m.items()}).startswith(
        f"help RMSE {m['help/rmse']:.3f}, Pearson {m['help/pearson']:.3f} | polite RMSE")

    # Pairs: as before (accuracy, margin, ECE), the loss the mean of -log sigmoid(margin).
    pairs = EvalScores("pairs", chosen=np.array([1.0, 0.0]), rejected=np.array([0.0, 1.0]))
    assert eval_metrics(pairs)["accuracy"] == 0.5
    assert eval_loss(pairs, "bradley_terry") == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)
    assert summary_line({"final_accuracy": 0.5, "final_mean_margin": 0.0, "final_ece": 0.1, "final_pairs": 2}) == \
        "accuracy 0.500 | mean margin 0.000 | ECE 0.100 (2 pairs)"
