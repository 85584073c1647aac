"""The benchmark suites (`rayreward evaluate --suite`): each suite's official rules on
small data sets in the public schema, with rewards fixed by a table and the scores
worked out by hand; reading and checking suite data; and end to end through the CLI."""

from __future__ import annotations

import json
import math

import pytest

from rayreward.evaluation.suites import get_suite, score_suite, score_with
from rayreward.evaluation.suites.data import check_rows, load_rows
from rayreward.data.formats import DataFormatError
from rayreward.data.sources import DataSourceError

NAN = float("nan")


def _scripted(table: dict[str, float]):
    """A scorer fixed by a table: answer text -> reward (every answer here is unique)."""
    return lambda prompt, answer: table[answer]


# -- RewardBench v1 ---------------------------------------------------------------------

def _v1_row(i, subset, chosen, rejected):
    return {"prompt": f"question {i}", "chosen": chosen, "chosen_model": "m-a", "rejected": rejected,
            "rejected_model": "m-b", "subset": subset, "id": i}


V1_ROWS = [
    _v1_row(0, "alpacaeval-easy", "c0", "r0"),   # correct
    _v1_row(1, "alpacaeval-easy", "c1", "r1"),   # tie: wrong
    _v1_row(2, "mt-bench-hard", "c2", "r2"),     # NaN chosen: wrong
    _v1_row(3, "llmbar-natural", "c3", "r3"),    # correct
    _v1_row(4, "llmbar-natural", "c4", "r4"),    # correct
    _v1_row(5, "math-prm", "c5", "r5"),          # correct
    _v1_row(6, "math-prm", "c6", "r6"),          # wrong
    _v1_row(7, "hep-go", "c7", "r7"),            # correct
    _v1_row(8, "my-extra-subset", "c8", "r8"),   # outside the four sections
]
V1_REWARDS = {"c0": 2.0, "r0": 1.0, "c1": 0.5, "r1": 0.5, "c2": NAN, "r2": -3.0, "c3": 1.0, "r3": 0.0,
              "c4": 0.1, "r4": -0.1, "c5": 3.0, "r5": 2.0, "c6": 1.0, "r6": 4.0, "c7": 0.0, "r7": -1.0,
              "c8": 1.0, "r8": 0.0}


def test_rewardbench_v1_official_rules():
    s = score_with("rewardbench", V1_ROWS, _scripted(V1_REWARDS))
    assert s["subsets"]["alpacaeval-easy"] == {"score": 0.5, "count": 2}
    assert s["subsets"]["mt-bench-hard"] == {"score": 0.0, "count": 1}
    assert s["subsets"]["math-prm"]["score"] == 0.5
    # Sections: example-count-weighted means with the official counts (math-prm 984, hep-* 164,
    # mt-bench-hard 37, llmbar-natural 100); Safety has no data and scores 0 as officially.
    chat, chat_hard = 0.5, (0.0 * 37 + 1.0 * 100) / 137
    reasoning = (0.5 * 984 + 1.0 * 164) / (984 + 164)
    assert s["sections"]["Chat"] == {"score": chat, "count": 2, "weight": 100}
    assert s["sections"]["Chat Hard"]["score"] == pytest.approx(chat_hard, abs=1e-12)
    assert s["sections"]["Reasoning"]["score"] == pytest.approx(reasoning, abs=1e-12)
    assert s["sections"]["Reasoning"]["count"] == 3 and s["sections"]["Reasoning"]["weight"] == 1148
    assert s["sections"]["Safety"] == {"score": 0.0, "count": 0, "weight": 0}
    assert s["missing"] == ["Safety"] and s["unmapped_subsets"] == ["my-extra-subset"]
    assert s["overall"] == pytest.approx((chat + chat_hard + 0.0 + reasoning) / 4, abs=1e-12)
    assert s["nan_rewards"] == 1 and s["nan_rows"] == 1 and s["rows"] == 9 and s["completions"] == 18
    assert s["per_row"][:3] == [1.0, 0.0, 0.0]


# -- RewardBench 2 ----------------------------------------------------------------------

def _v2_row(rid, subset, chosen, rejected, num_correct=1):
    return {"id": rid, "prompt": f"prompt {rid}", "chosen": chosen, "rejected": rejected,
            "num_correct": num_correct, "num_rejected": len(rejected),
            "total_completions": len(chosen) + len(rejected), "models": ["m"] * (len(chosen) + len(rejected)),
            "subset": subset}


V2_ROWS = [
    _v2_row("1", "Math", ["a1"], ["b1", "c1", "d1"]),       # first is the max alone: 1
    _v2_row("2", "Math", ["a2"], ["b2", "c2", "d2"]),       # max shared by 3: 1/3
    _v2_row("3", "Math", ["a3"], ["b3", "c3", "d3"]),       # not the max: 0
    _v2_row("4", "Focus", ["a4"], ["b4", "c4", "d4"]),      # a NaN among the rejected: 0
    _v2_row("5", "Factuality", ["a5"], ["b5", "c5", "d5"]),  # 1
    # Ties: prompt 7 (ref: 1 correct of 3; tied: 3 correct of 4), prompt 8 (ref; tied with
    # two equally scored correct answers, a zero spread).
    _v2_row("ref:7", "Ties", ["r7"], ["w7a", "w7b"]),
    _v2_row("tied:7", "Ties", ["t7a", "t7b", "t7c"], ["x7"], num_correct=3),
    _v2_row("ref:8", "Ties", ["r8"], ["w8"]),
    _v2_row("tied:8", "Ties", ["t8a", "t8b"], ["x8"], num_correct=2),
]
V2_REWARDS = {
    "a1": 3.0, "b1": 1.0, "c1": 2.0, "d1": 0.0,
    "a2": 2.0, "b2": 2.0, "c2": 2.0, "d2": 1.0,
    "a3": 1.0, "b3": 5.0, "c3": 0.0, "d3": 0.0,
    "a4": 9.0, "b4": 1.0, "c4": NAN, "d4": 0.0,
    "a5": 0.5, "b5": 0.4, "c5": 0.3, "d5": 0.2,
    "r7": 4.0, "w7a": 1.0, "w7b": 2.0,
    "t7a": 5.0, "t7b": 3.0, "t7c": 4.0, "x7": 2.5,
    "r8": 1.0, "w8": 2.0,
    "t8a": 3.0, "t8b": 3.0, "x8": 1.0,
}


def test_rewardbench2_best_of_n_tie_credit_and_ties_formula():
    s = score_with("rewardbench2", V2_ROWS, _scripted(V2_REWARDS))
    assert s["subsets"]["Math"] == {"score": pytest.approx((1 + 1 / 3 + 0) / 3), "count": 3}
    assert s["subsets"]["Focus"]["score"] == 0.0 and s["subsets"]["Factuality"]["score"] == 1.0
    assert s["per_row"][:5] == [1.0, pytest.approx(1 / 3), 0.0, 0.0, 1.0] and s["per_row"][5:] == [None] * 4
    # Ties by hand. Prompt 7: ref accurate (margin 4-2=2); tied accurate (worst correct 3 >
    # best wrong 2.5, margin 0.5), spread 5-3=2. Prompt 8: ref wrong (margin 1-2=-1); tied
    # accurate (margin 3-1=2), spread 0.
    ref_acc, tied_acc = 0.5, 1.0
    pref = (0.5 > 2) / 2 + (2 > 0) / 2                      # tied margin > spread
    pref_hard = (min(2, 0.5) > 2) / 2 + (min(-1, 2) > 0) / 2  # min(ref, tied margin) > spread
    margin = (math.tanh(0.5 / 2 - 1) + -1.0) / 2             # -1/0 -> -inf -> tanh -1
    ties = 0.3 * tied_acc + 0.3 * ref_acc + 0.2 * pref + 0.2 * pref_hard + 0.01 * margin
    assert s["ties"]["ref_accuracy"] == ref_acc and s["ties"]["tied_accuracy"] == tied_acc
    assert (s["ties"]["correctness_preferred"], s["ties"]["correctness_preferred_hard"]) == (0.5, 0.0)
    assert s["ties"]["correctness_margin"] == pytest.approx(margin, abs=1e-12)
    assert s["subsets"]["Ties"] == {"score": pytest.approx(ties, abs=1e-12), "count": 4}
    # Overall: the mean of the subsets present; Precise IF and Safety are missing.
    assert s["missing"] == ["Precise IF", "Safety"]
    assert list(s["sections"]) == ["Factuality", "Math", "Focus", "Ties"]
    assert s["overall"] == pytest.approx((1.0 + 4 / 9 + 0.0 + ties) / 4, abs=1e-12)
    assert s["nan_rewards"] == 1 and s["completions"] == 32


def test_rewardbench2_nan_anywhere_in_a_row_is_wrong_and_ties_nan_follows_python_max():
    from rayreward.evaluation.suites.rewardbench2 import best_of_n_credit

    assert best_of_n_credit([NAN, 1.0, 0.0]) == 0.0 and best_of_n_credit([2.0, 1.0, NAN]) == 0.0
    assert best_of_n_credit([1.0, 1.0]) == 0.5 and best_of_n_credit([0.0, 1.0]) == 0.0
    # A NaN correct answer in Ties: Python's min keeps the first item when comparisons fail,
    # so min([nan, 3]) is nan (not accurate) while min([3, nan]) is 3, as in the official code.
    rows = [_v2_row("ref:1", "Ties", ["p"], ["q"]), _v2_row("tied:1", "Ties", ["s", "t"], ["u"], num_correct=2)]
    first = score_suite("rewardbench2", rows, [[NAN, 0.0], [NAN, 3.0, 1.0]])
    assert first["ties"]["ref_accuracy"] == 0.0 and first["ties"]["tied_accuracy"] == 0.0
    second = score_suite("rewardbench2", rows, [[1.0, 0.0], [3.0, NAN, 1.0]])
    assert second["ties"]["ref_accuracy"] == 1.0 and second["ties"]["tied_accuracy"] == 1.0
    assert second["nan_rewards"] == 1


# -- RM-Bench ---------------------------------------------------------------------------

def _rm_row(i, domain, chosen, rejected):
    return {"id": i, "prompt": f"p{i}", "chosen": chosen, "rejected": rejected, "domain": domain}


RM_ROWS = [
    _rm_row(0, "chat", ["ca1", "ca2", "ca3"], ["ra1", "ra2", "ra3"]),
    _rm_row(1, "chat", ["cb1", "cb2", "cb3"], ["rb1", "rb2", "rb3"]),
    _rm_row(2, "safety-refuse", ["cs1", "cs2", "cs3"], ["rs1", "rs2", "rs3"]),
    _rm_row(3, "safety-response", ["ct1", "ct2", "ct3"], ["rt1", "rt2", "rt3"]),
    _rm_row(4, "poetry", ["cp1", "cp2", "cp3"], ["rp1", "rp2", "rp3"]),
]
RM_REWARDS = {
    "ca1": 1.0, "ca2": 2.0, "ca3": 3.0, "ra1": 0.0, "ra2": 2.5, "ra3": 4.0,
    "cb1": 5.0, "cb2": 5.0, "cb3": 5.0, "rb1": 1.0, "rb2": NAN, "rb3": 5.0,   # NaN and a tie: wrong
    "cs1": 1.0, "cs2": 1.0, "cs3": 1.0, "rs1": 0.0, "rs2": 0.0, "rs3": 0.0,
    "ct1": 0.0, "ct2": 0.0, "ct3": 0.0, "rt1": 1.0, "rt2": 1.0, "rt3": 1.0,
    "cp1": 1.0, "cp2": 1.0, "cp3": 1.0, "rp1": 0.0, "rp2": 0.0, "rp3": 0.0,
}


def test_rm_bench_matrix_levels_and_domains():
    s = score_with("rm-bench", RM_ROWS, _scripted(RM_REWARDS))
    # chat: row 0 wins (i, j) at (0,0) (1,0) (2,0) (2,1); row 1 wins column 0 only.
    assert s["domains"]["chat"]["matrix"] == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.5, 0.0]]
    chat = {"hard": 0.0, "normal": 1 / 3, "easy": 2.5 / 3}
    for level, value in chat.items():
        assert s["domains"]["chat"][level] == pytest.approx(value, abs=1e-12)
    # safety-refuse and safety-response together: every cell 1/2.
    assert s["domains"]["safety"]["count"] == 2 and s["domains"]["safety"]["normal"] == 0.5
    chat_avg = sum(chat.values()) / 3
    assert s["sections"]["chat"] == {"score": pytest.approx(chat_avg, abs=1e-12), "count": 2}
    assert s["sections"]["hard"]["score"] == pytest.approx((0.0 + 0.5) / 2)
    assert s["sections"]["easy"]["score"] == pytest.approx((2.5 / 3 + 0.5) / 2)
    assert s["overall"] == pytest.approx((chat_avg + 0.5) / 2, abs=1e-12)
    assert s["missing"] == ["math", "code"] and s["unmapped_rows"] == 1
    assert s["per_row"][0] == pytest.approx(4 / 9) and s["nan_rewards"] == 1


# -- reading and checking suite data ----------------------------------------------------

def test_suite_data_from_local_files_in_the_hub_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    v2 = pa.Table.from_pylist(V2_ROWS, schema=pa.schema([
        ("id", pa.string()), ("prompt", pa.string()), ("chosen", pa.list_(pa.string())),
        ("rejected", pa.list_(pa.string())), ("num_correct", pa.int64()), ("num_rejected", pa.int64()),
        ("total_completions", pa.int64()), ("models", pa.list_(pa.string())), ("subset", pa.string())]))
    (tmp_path / "v2").mkdir()
    pq.write_table(v2, tmp_path / "v2" / "test-00000.parquet")
    rows, where = load_rows(get_suite("rewardbench2"), str(tmp_path / "v2"))
    assert len(rows) == 9 and where == str(tmp_path / "v2")
    direct = score_with("rewardbench2", V2_ROWS, _scripted(V2_REWARDS))
    assert score_with("rewardbench2", rows, _scripted(V2_REWARDS))["overall"] == pytest.approx(direct["overall"])
    # RM-Bench's own files are JSON arrays.
    (tmp_path / "rm.json").write_text(json.dumps(RM_ROWS))
    assert len(load_rows(get_suite("rm-bench"), str(tmp_path / "rm.json"))[0]) == 5


def test_suite_data_problems_are_listed_by_row_and_field():
    bad = [dict(V1_ROWS[0]), dict(V1_ROWS[1], chosen=None), dict(V1_ROWS[2], subset=3)]
    with pytest.raises(DataFormatError, match=r"row 1, field 'chosen': expected a string.*row 2, field 'subset'"):
        check_rows(get_suite("rewardbench"), bad, "v1.jsonl")
    with pytest.raises(DataFormatError, match=r"row 0, field 'id': a Ties row needs an id 'ref:<n>'"):
        check_rows(get_suite("rewardbench2"), [dict(V2_ROWS[5], id="7")], "v2")
    with pytest.raises(DataFormatError, match=r"tied:7 needs at least two correct"):
        check_rows(get_suite("rewardbench2"), [dict(V2_ROWS[6], num_correct=1)], "v2")
    with pytest.raises(DataFormatError, match=r"field 'chosen': expected a list of 3 strings"):
        check_rows(get_suite("rm-bench"), [dict(RM_ROWS[0], chosen=["a", "b"])], "rm")


def test_hub_id_not_cached_offline_says_to_pass_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataSourceError) as err:
        load_rows(get_suite("rewardbench2"), None)
    message = str(err.value)
    assert "\n" not in message and "'allenai/reward-bench-2' split 'test'" in message
    assert "pass --data a local jsonl/json/parquet file or folder with the columns id (string)" in message


# -- end to end: `rayreward evaluate --suite`, three suites, two models ------------------

def _write_suite_files(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    # v1 as the hub's parquet columns and types; v2 as JSON Lines; RM-Bench as its JSON array.
    v1 = pa.Table.from_pylist(V1_ROWS, schema=pa.schema([
        ("prompt", pa.string()), ("chosen", pa.string()), ("chosen_model", pa.string()), ("rejected", pa.string()),
        ("rejected_model", pa.string()), ("subset", pa.string()), ("id", pa.int64())]))
    pq.write_table(v1, root / "filtered.parquet")
    (root / "v2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in V2_ROWS))
    (root / "rm.json").write_text(json.dumps(RM_ROWS))
    return {"rewardbench": root / "filtered.parquet", "rewardbench2": root / "v2.jsonl", "rm-bench": root / "rm.json"}


def _train_tiny(path, steps, seed):
    """The built-in tiny Llama trained a few steps by rayreward's RewardTrainer (the trainer
    `rayreward train` runs on each worker), saved with its tokenizer and chat template."""
    from conftest import SAMPLE_DATA, read_jsonl

    from rayreward import RewardConfig, RewardTrainer
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=seed)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(SAMPLE_DATA / "train.jsonl", 160)]
    args = RewardConfig(output_dir=str(path / "trainer"), max_steps=steps, per_device_train_batch_size=16,
                        learning_rate=3e-3, report_to=[], save_strategy="no", activation_checkpointing=False,
                        use_cpu=True, max_length=256, disable_tqdm=True, seed=seed)
    RewardTrainer(model=model, args=args, tokenizer=tok, train_dataset=rows).train()
    model.save_pretrained(path / "model")
    tok.save_pretrained(path / "model")
    return path / "model"


def _direct_rewards(model_dir, pairs):
    """Each (prompt, answer) through the model's chat template and one forward pass."""
    import torch

    from rayreward.core.model import load_reward_model
    from rayreward.data.tokenizer import load_tokenizer

    tok, model = load_tokenizer(str(model_dir)), load_reward_model(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for prompt, answer in pairs:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            out.append(model(input_ids=torch.tensor([list(ids)])).logits[0, 0].item())
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_suites_two_models_end_to_end(ray_local, tmp_path, capsys):
    import pyarrow.parquet as pq

    from rayreward.commands.cli import main
    from test_evaluate import assert_valid_png

    files = _write_suite_files(tmp_path / "data")
    models = [str(_train_tiny(tmp_path / "a", 6, 0)), str(_train_tiny(tmp_path / "b", 2, 1))]
    out = tmp_path / "suites"
    args = ["evaluate", "--suite", "rewardbench", "--suite", "rewardbench2", "--suite", "rm-bench",
            "--model", models[0], "--model", models[1], "--out", str(out), "--cpus-per-actor", "0.5", "--batch-rows", "16"]
    for name, path in files.items():
        args += ["--data", f"{name}={path}"]
    assert main(args) == 0
    printed = capsys.readouterr().out

    for name, rows in (("rewardbench", V1_ROWS), ("rewardbench2", V2_ROWS), ("rm-bench", RM_ROWS)):
        doc = json.loads((out / f"{name}.json").read_text())
        assert doc["rows"] == len(rows) and list(doc["models"]) == models
        table = pq.read_table(out / f"{name}_rewards.parquet").to_pylist()
        assert [r["model"] for r in table] == [models[0]] * len(rows) + [models[1]] * len(rows)
        suite = get_suite(name)
        for model in models:
            mine = [r for r in table if r["model"] == model]
            rewards = [[r["reward_chosen"], r["reward_rejected"]] if name == "rewardbench"
                       else r["reward_chosen"] + r["reward_rejected"] for r in mine]
            # Every completion's reward is the model's own forward pass over its chat template.
            pairs = [(row["prompt"], a) for row in rows for a in suite.completions(row)]
            flat = [v for values in rewards for v in values]
            assert flat == pytest.approx(_direct_rewards(model, pairs), abs=1e-4)
            # The JSON is the suite's official scoring of exactly those rewards.
            expected = score_suite(name, rows, rewards)
            got = doc["models"][model]
            assert got["overall"] == pytest.approx(expected["overall"], abs=1e-12)
            assert got["sections"] == json.loads(json.dumps(expected["sections"]))
            assert got["nan_rewards"] == 0 and got["rendering"] == "chat template"
            assert got["completions"] == len(pairs)
        assert_valid_png(out / f"{name}.png")
        assert f"{name} (scores in %" in printed
    # One table row per model, one column per section.
    assert "Chat Hard" in printed and "Precise IF" in printed and "normal" in printed
    a_label, b_label = "a/model", "b/model"
    v1 = json.loads((out / "rewardbench.json").read_text())["models"]
    assert f"{100 * v1[models[0]]['overall']:.1f}" in next(l for l in printed.splitlines() if l.startswith(a_label))
    assert any(l.startswith(b_label) for l in printed.splitlines())


# -- ranking sweep trials by a suite score ----------------------------------------------

def test_suite_metric_in_a_sweep_is_checked_before_ray(tmp_path):
    from rayreward.job.config import load_job_config
    from rayreward.job.tree import ConfigError
    from rayreward.tune.sweep import suite_slice, sweep_problems

    with pytest.raises(ConfigError) as err:
        load_job_config(None, ["tune.metric=rewardbench2/overal", "tune.mode=min"])
    text = str(err.value)
    assert "tune.metric: got 'rewardbench2/overal'; expected one of rewardbench2/overall, rewardbench2/Factuality" in text
    assert "tune.mode: got 'min' with the suite score rewardbench2/overal; expected max" in text
    assert "tune.suite_data: got null with tune.metric rewardbench2/overal" in text
    with pytest.raises(ConfigError, match="tune.suite_data: set, but tune.metric 'eval_accuracy' is not a suite"):
        load_job_config(None, ["tune.suite_data=x.jsonl"])
    bad = tmp_path / "v2.jsonl"
    bad.write_text(json.dumps(dict(V2_ROWS[0], chosen="not a list")) + "\n")
    base = ["lora.enabled=true", "train.max_steps=40", "tune.scheduler.grace_period=10",
            "tune.metric=rewardbench2/overall"]
    problems = sweep_problems(load_job_config(None, [*base, f"tune.suite_data={bad}"]))
    assert problems == [f"tune.suite_data: {bad}: not in the rewardbench2 schema (id (string), prompt (string), "
                        "chosen (list of string), rejected (list of string), num_correct (int64), subset (string)): "
                        "row 0, field 'chosen': expected a list of strings, got str 'not a list'"]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in V2_ROWS))
    job = load_job_config(None, [*base, f"tune.suite_data={good}", "tune.suite_rows=3"])
    assert sweep_problems(job) == []
    # The slice keeps a Ties prompt's ref and tied rows together, and is the same each time.
    part = suite_slice(job)[0].rows
    assert part == suite_slice(job)[0].rows and len(part) >= 3
    ties = [r["id"].partition(":")[2] for r in part if r["subset"] == "Ties"]
    assert all(ties.count(k) == 2 for k in ties)


def test_suite_metrics_callback_reports_the_official_score_at_each_save(tmp_path):
    """The callback a sweep trial's workers run: at each saving step the score of the model
    being trained, equal to the suite's rules over that model's own forward passes."""
    from conftest import SAMPLE_DATA, read_jsonl
    from transformers import TrainerCallback

    from rayreward import RewardConfig, RewardTrainer
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer
    from rayreward.evaluation.suites.runner import SuiteData
    from rayreward.run.suite_eval import SuiteMetrics

    class Snapshot(TrainerCallback):  # the rewards of the model as it is when the callback scores it
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if control.should_save:
                model.eval()
                snapshots[state.global_step] = _rewards_of(model, tok, RM_ROWS)
                model.train()

    def _rewards_of(model, tok, rows):
        import torch

        out = []
        with torch.no_grad():
            for row in rows:
                values = []
                for answer in get_suite("rm-bench").completions(row):
                    messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
                    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
                    values.append(model(input_ids=torch.tensor([list(ids)])).logits[0, 0].item())
                out.append(values)
        return out

    snapshots: dict[int, list] = {}
    tok = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=0)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(SAMPLE_DATA / "train.jsonl", 64)]
    args = RewardConfig(output_dir=str(tmp_path), max_steps=4, save_strategy="steps", save_steps=2,
                        per_device_train_batch_size=16, learning_rate=3e-3, report_to=[], use_cpu=True,
                        activation_checkpointing=False, disable_tqdm=True, seed=0, save_only_model=True)
    trainer = RewardTrainer(model=model, args=args, tokenizer=tok, train_dataset=rows,
                            callbacks=[Snapshot(), SuiteMetrics([SuiteData("rm-bench", RM_ROWS, "rm")])])
    trainer.train()
    entries = [e for e in trainer.state.log_history if "rm-bench/overall" in e]
    assert [e["step"] for e in entries] == [2, 4]
    for entry in entries:
        expected = score_suite("rm-bench", RM_ROWS, snapshots[entry["step"]])
        assert entry["rm-bench/overall"] == pytest.approx(expected["overall"], abs=1e-9)
        assert entry["rm-bench/hard"] == pytest.approx(expected["sections"]["hard"]["score"], abs=1e-9)
        assert "rm-bench/math" not in entry  # no math rows in this data
    assert model.training  # left in training mode
