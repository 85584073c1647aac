"""Data config, source resolution, row checks and step planning: the parts that run
before (or without) Ray."""

from __future__ import annotations

import json
from dataclasses import fields

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import write_jsonl

from rayreward import BadRowError

from rayreward import DataFormatError
from rayreward.data import DataConfig, DataSourceError, plan_steps, resolve_source
from rayreward.data.config import ColumnsConfig
from rayreward.data.reader import ReadSpec, probe, read_rows
from rayreward.data.formats import ColumnNames

PAIR = {"prompt": "Q: two plus two?\nA:", "chosen": " Four.", "rejected": " Five.", "margin": 1.0}


# -- config -------------------------------------------------------------------------


def test_every_field_has_help_and_defaults_validate():
    for cls in (DataConfig, ColumnsConfig):
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    assert DataConfig(train="x.jsonl").validate() == []


def test_validate_reports_every_problem_at_once():
    cfg = DataConfig(
        train="",
        max_length=-3,
        length_policy="cut",
        on_bad_rows="ignore",
        shuffle="full",
        eval_split=1.5,
        format="xml",
        tokenize_actors=0,
        tokenize_num_cpus=0,
        columns=ColumnsConfig(chosen=""),
    )
    problems = cfg.validate()
    assert "data.max_length: got -3; expected a positive integer" in problems
    assert "data.eval_split: got 1.5; expected a fraction in [0, 1)" in problems
    for name in ("train", "length_policy", "on_bad_rows", "shuffle", "format", "tokenize_actors",
                 "tokenize_num_cpus", "columns.chosen"):
        assert any(p.startswith(f"data.{name}: got") for p in problems), name
    assert len(problems) == 10
    both = DataConfig(train="a.jsonl", eval="b.jsonl", eval_split=0.1).validate()
    assert both == ["data.eval_split: got 0.1; expected 0 when data.eval is set (use one or the other)"]


# -- sources ------------------------------------------------------------------------


def test_file_folder_and_glob(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / "d" / f"part-{i}.jsonl", [PAIR])
    (tmp_path / "d" / "README.md").write_text("not data")
    write_jsonl(tmp_path / "d" / ".hidden" / "x.jsonl", [PAIR])
    one = resolve_source(str(tmp_path / "d" / "part-0.jsonl"))
    assert one.files == (str(tmp_path / "d" / "part-0.jsonl"),) and one.kind == "jsonl"
    folder = resolve_source(str(tmp_path / "d"))
    assert [f.rsplit("/", 1)[1] for f in folder.files] == ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl"]
    glob = resolve_source(str(tmp_path / "d" / "part-[12].jsonl"))
    assert len(glob.files) == 2


def test_missing_path_mixed_kinds_and_empty_glob_are_explained(tmp_path):
    with pytest.raises(DataSourceError, match=r"data.train: '.*nope.jsonl' does not exist"):
        resolve_source(str(tmp_path / "nope.jsonl"))
    write_jsonl(tmp_path / "m" / "a.jsonl", [PAIR])
    pq.write_table(pa.Table.from_pylist([PAIR]), tmp_path / "m" / "b.parquet")
    with pytest.raises(DataSourceError, match=r"mixes file kinds \(jsonl, parquet\); keep one kind per source"):
        resolve_source(str(tmp_path / "m"))
    with pytest.raises(DataSourceError, match="matched no .jsonl"):
        resolve_source(str(tmp_path / "m" / "*.csv"))
    with pytest.raises(DataSourceError, match="holds no .jsonl"):
        (tmp_path / "empty").mkdir()
        resolve_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("spec", ["Anthropic/hh-rlhf", "hf://datasets/Anthropic/hh-rlhf"])
def test_hub_names_fail_with_what_to_do(spec, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataSourceError) as err:
        resolve_source(spec, "data.eval", role="eval")
    text = str(err.value)
    assert "hub data set name" in text and "downloads nothing" in text
    assert "datasets.load_dataset('Anthropic/hh-rlhf').save_to_disk('DIR')" in text and "set data.eval" in text


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([PAIR] * 3).save_to_disk(str(tmp_path / "one"))
    src = resolve_source(str(tmp_path / "one"))
    assert src.kind == "arrow" and all(f.endswith(".arrow") for f in src.files)
    DatasetDict({"train": Dataset.from_list([PAIR]), "test": Dataset.from_list([PAIR])}).save_to_disk(str(tmp_path / "dd"))
    assert resolve_source(str(tmp_path / "dd")).root.endswith("dd/train")
    assert resolve_source(str(tmp_path / "dd"), "data.eval", role="eval").root.endswith("dd/test")
    DatasetDict({"other": Dataset.from_list([PAIR])}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DataSourceError, match=r"splits \['other'\] and none named train; point data.train at"):
        resolve_source(str(tmp_path / "odd"))


def test_unreachable_s3_endpoint_names_the_fix(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DataSourceError) as err:
        resolve_source("s3://bucket/train.jsonl")
    assert "cannot reach 's3://bucket/train.jsonl'" in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)


# -- probing and row checks ------------------------------------------------------------


def test_probe_detects_each_format(tmp_path):
    conv = {"chosen": [{"role": "assistant", "content": "hi"}], "rejected": [{"role": "assistant", "content": "no"}]}
    pretok = {"input_ids_chosen": [1, 2], "attention_mask_chosen": [1, 1],
              "input_ids_rejected": [3], "attention_mask_rejected": [1]}
    cases = {
        "implicit_prompt": {"chosen": "a b", "rejected": "a c"},
        "explicit_prompt": PAIR,
        "conversational": conv,
        "pretokenized": pretok,
    }
    for fmt, row in cases.items():
        src = resolve_source(str(write_jsonl(tmp_path / f"{fmt}.jsonl", [row])))
        found, has_prompt, has_margin, samples = probe(src, "auto", ColumnNames(), "error")
        assert found == fmt and len(samples) == 1
    assert has_margin is False
    with pytest.raises(DataFormatError, match="missing column"):
        probe(resolve_source(str(write_jsonl(tmp_path / "x.jsonl", [{"question": "q"}]))), "auto", ColumnNames(), "error")


def test_renamed_columns_map_onto_the_pair(tmp_path):
    row = {"q": "Why?", "good": " Because.", "bad": " No.", "score": 2}
    src = resolve_source(str(write_jsonl(tmp_path / "r.jsonl", [row])))
    names = ColumnNames(prompt="q", chosen="good", rejected="bad", margin="score")
    fmt, has_prompt, has_margin, samples = probe(src, "auto", names, "error")
    assert (fmt, has_prompt, has_margin) == ("explicit_prompt", True, True)
    assert samples == [{"chosen": " Because.", "rejected": " No.", "prompt": "Why?", "margin": 2.0}]


BAD_LINES = [
    ('{"prompt": "p", "chosen": "a"}', "rejected", "missing value; every row needs a chosen and a rejected"),
    ('{"chosen": "a", "rejected": "b", "margin": 0}', "prompt", "missing; the data set's first row has 'prompt'"),
    ('{"prompt": "p", "chosen": 7, "rejected": "b"}', "chosen", "expected a string, got int (7)"),
    ('{"prompt": "p", "chosen": "a", "rejected": "   "}', "rejected", "empty text"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "high"}', "margin", "margin must be a finite number, got str"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}', "margin", "margin must be a finite number, got nan"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"', None, "broken JSON line (Expecting ',' delimiter"),
    ('["p", "a", "b"]', None, "expected a JSON object with the pair's fields, got list"),
]


def _bad_file(tmp_path):
    lines = [json.dumps(PAIR)] + [line for line, _, _ in BAD_LINES] + ["", json.dumps(PAIR)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("index", range(len(BAD_LINES)))
def test_each_bad_row_kind_is_named_with_file_line_and_field(tmp_path, index):
    path = _bad_file(tmp_path)
    src = resolve_source(str(path))
    _, field, problem = BAD_LINES[index]
    line = index + 2  # line 1 is a good pair
    # The probe reads the first rows on the driver: a bad one stops the run there.
    lines = path.read_text().splitlines()
    (tmp_path / "one.jsonl").write_text(lines[0] + "\n" + lines[index + 1] + "\n")
    with pytest.raises(BadRowError) as err:
        probe(resolve_source(str(tmp_path / "one.jsonl")), "auto", ColumnNames(), "error")
    assert str(err.value).startswith(f"{tmp_path / 'one.jsonl'}, row 2")
    assert problem in str(err.value)
    # The read tasks mark the same row in place, with its line number in the whole file.
    plan = ReadSpec(src, "explicit_prompt", ColumnNames(), has_prompt=True, has_margin=True)
    marked = {r["_row"]: r for r in read_rows(plan, str(path)) if r["_problem"]}
    assert marked[line]["_field"] == field and problem in marked[line]["_problem"]
    assert marked[line]["_source"] == str(path)


def test_read_rows_marks_all_bad_rows_and_keeps_good_ones(tmp_path):
    path = _bad_file(tmp_path)
    plan = ReadSpec(resolve_source(str(path)), "explicit_prompt", ColumnNames(), True, True)
    rows = list(read_rows(plan, str(path)))
    assert [r["_row"] for r in rows if r["_problem"]] == list(range(2, 2 + len(BAD_LINES)))
    good = [r for r in rows if not r["_problem"]]
    assert [r["_row"] for r in good] == [1, len(BAD_LINES) + 3]  # the blank line still counts
    assert good[0]["chosen"] == PAIR["chosen"] and good[0]["margin"] == 1.0


def test_broken_json_array_file_is_a_file_error(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"chosen": "a", "rejected": "b"},\n {"chosen": "a" "rejected": "b"}]')
    with pytest.raises(DataSourceError, match=r"rows.json: not valid JSON \(Expecting ',' delimiter at line 2"):
        probe(resolve_source(str(path)), "auto", ColumnNames(), "error")


def test_eval_split_is_deterministic_disjoint_and_near_the_fraction(tmp_path):
    src = resolve_source(str(write_jsonl(tmp_path / "t.jsonl", [PAIR])))
    path = src.files[0]

    def part(name, seed=1):
        plan = ReadSpec(src, "explicit_prompt", ColumnNames(), True, True, name, 0.2, seed)
        return {row for row in range(1, 5001) if plan.in_part(path, row)}

    train, evals = part("train"), part("eval")
    assert train.isdisjoint(evals) and len(train | evals) == 5000
    assert 900 < len(evals) < 1100
    assert evals == part("eval") and evals != part("eval", seed=2)
    # Named by the path relative to the source root: the same file elsewhere splits the same.
    moved = resolve_source(str(write_jsonl(tmp_path / "elsewhere" / "t.jsonl", [PAIR])))
    plan = ReadSpec(moved, "explicit_prompt", ColumnNames(), True, True, "eval", 0.2, 1)
    assert {row for row in range(1, 5001) if plan.in_part(moved.files[0], row)} == evals


# -- steps ----------------------------------------------------------------------------


def test_plan_steps_from_data_size_and_for_a_stream():
    plan = plan_steps(1000, num_workers=2, per_worker_batch_size=8, gradient_accumulation_steps=2, num_epochs=3)
    # 500 pairs per worker -> 63 batches -> 32 optimizer steps per epoch.
    assert (plan.pairs_per_worker, plan.steps_per_epoch, plan.max_steps) == (500, 32, 96)
    assert plan_steps(1000, num_workers=2, per_worker_batch_size=8, max_steps=10).max_steps == 10
    assert plan_steps(None, num_workers=2, per_worker_batch_size=8, max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="stream of unknown size .*; set train.max_steps"):
        plan_steps(None, num_workers=2, per_worker_batch_size=8, num_epochs=1)
    with pytest.raises(ValueError, match="cannot be shared among 4 workers"):
        plan_steps(3, num_workers=4, per_worker_batch_size=8)


def test_a_worker_process_loads_the_tokenizer_once_per_build():
    from rayreward.data import pipeline
    from rayreward.data.tokenizer import TokenizerSpec

    pipeline._ENCODERS.clear()
    spec = TokenizerSpec("builtin:tiny-llama")

    def args(build, fmt="implicit_prompt"):
        return pipeline.EncoderArgs(spec, fmt, ColumnNames(), 128, "filter", None, build)

    first = pipeline._process_encoder(args("a"))
    # Train's and eval's batches of one build_datasets call share the loaded tokenizer...
    assert pipeline._process_encoder(args("a")) is first
    # ...another call loads afresh (an edited tokenizer folder is read again)...
    second = pipeline._process_encoder(args("b"))
    assert second is not first and second.tokenizer is not first.tokenizer
    # ...and a process keeps the last two.
    pipeline._process_encoder(args("c"))
    assert list(pipeline._ENCODERS) == [args("b"), args("c")]
    pipeline._ENCODERS.clear()
