"""The Ray Data pipeline end to end on a local Ray (127.0.0.1): real hh-rlhf text in every
format and file kind, object storage, bad rows, the eval split, and two workers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_jsonl
from data_helpers import convert, dataset_keys, expected_keys, pair_key, write_jsonl

from rayreward import BadRowError

from rayreward import DataFormatError
from rayreward.data import DataConfig, build_datasets, iter_pair_batches, plan_steps
from rayreward.data.reader import ReadSpec
from rayreward.data.sources import resolve_source
from rayreward.data.formats import ColumnNames

TOKENIZER = "builtin:tiny-llama"
N_ROWS = 64


@pytest.fixture(scope="module")
def hh_rows(hh_dir):
    return read_jsonl(hh_dir / "train.jsonl", limit=N_ROWS)


def _cfg(train, **kw) -> DataConfig:
    # One tokenizer task at a time: the test machine has two cores for everything.
    return DataConfig(train=str(train), tokenize_actors=1, **kw)


def _write(rows: list[dict], kind: str, path: Path) -> Path:
    if kind == "jsonl":
        return write_jsonl(path.with_suffix(".jsonl"), rows)
    if kind == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows))
        return path
    if kind == "parquet":
        path = path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if kind == "csv":
        import pyarrow.csv as pacsv

        path = path.with_suffix(".csv")
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
        return path
    if kind == "save_to_disk":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
        return path
    raise ValueError(kind)


CASES = [
    ("implicit_prompt", "jsonl", "filter"),
    ("implicit_prompt", "csv", "truncate"),
    ("explicit_prompt", "parquet", "filter"),
    ("conversational", "save_to_disk", "filter"),
    ("pretokenized", "json", "truncate"),
    ("token_ids", "parquet", "filter"),
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt,kind,policy", CASES, ids=[f"{f}-{k}" for f, k, _ in CASES])
def test_each_format_gives_the_single_process_ids(ray_local, tmp_path, hh_rows, tokenizer, fmt, kind, policy):
    rows = convert(hh_rows, fmt, tokenizer)
    path = _write(rows, kind, tmp_path / "train")
    max_length = 1024 if policy == "filter" else 200

    prepared = build_datasets(_cfg(path, max_length=max_length, length_policy=policy), TOKENIZER)

    assert prepared.format == fmt
    assert dataset_keys(prepared.train) == expected_keys(rows, tokenizer, fmt, max_length, policy)
    counts = prepared.train_counts
    assert counts.rows_read == len(rows) and counts.bad_rows == 0 and counts.nodes == 1
    assert counts.pairs == prepared.num_train_pairs == prepared.train.count()
    if policy == "filter":
        assert counts.pairs + counts.filtered == len(rows) and counts.truncated == 0
    else:
        assert counts.truncated > 0 and counts.pairs == len(rows)
    schema = prepared.train.schema()
    assert str(schema.types[schema.names.index("input_ids_chosen")]) == "list<item: int32>"
    assert ("margin" in schema.names) == (fmt == "explicit_prompt")
    assert prepared.eval is None and prepared.metrics()["data/train_pairs"] == counts.pairs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parquet_folder_and_jsonl_glob(ray_local, tmp_path, hh_rows, tokenizer):
    (tmp_path / "pq").mkdir()
    for i in range(4):
        pq.write_table(pa.Table.from_pylist(hh_rows[i::4]), tmp_path / "pq" / f"part-{i}.parquet")
        write_jsonl(tmp_path / "js" / f"shard-{i}.jsonl", hh_rows[i::4])
    write_jsonl(tmp_path / "js" / "other.jsonl", hh_rows[:3])  # not matched by the glob
    expected = expected_keys(hh_rows, tokenizer, "implicit_prompt")

    folder = build_datasets(_cfg(tmp_path / "pq"), TOKENIZER)
    glob = build_datasets(_cfg(tmp_path / "js" / "shard-*.jsonl"), TOKENIZER)

    assert dataset_keys(folder.train) == expected
    assert dataset_keys(glob.train) == expected and glob.train_counts.rows_read == len(hh_rows)


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    yield f"http://{host}:{port}"
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reads_from_s3_api_on_loopback(ray_local, s3_endpoint, hh_rows, tokenizer, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="prefs")
    for i in range(2):
        path = write_jsonl(tmp_path / f"part-{i}.jsonl", hh_rows[i::2])
        s3.upload_file(str(path), "prefs", f"hh/part-{i}.jsonl")

    prepared = build_datasets(_cfg("s3://prefs/hh/", eval_split=0.25, seed=3), TOKENIZER)

    # The split hashes paths relative to the source root, so the same files held
    # locally give the same held-out rows.
    local = resolve_source(str(tmp_path))
    plan = ReadSpec(local, "implicit_prompt", ColumnNames(), False, False, "eval", 0.25, 3)
    held_out = [r for i in range(2) for n, r in enumerate(hh_rows[i::2], 1) if plan.in_part(f"{tmp_path}/part-{i}.jsonl", n)]
    assert 0 < len(held_out) < len(hh_rows) / 2
    assert dataset_keys(prepared.eval) == expected_keys(held_out, tokenizer, "implicit_prompt")
    both = sorted(dataset_keys(prepared.train) + dataset_keys(prepared.eval))
    assert both == expected_keys(hh_rows, tokenizer, "implicit_prompt")


def _bad_rows_file(tmp_path, hh_rows) -> tuple[Path, dict[int, str]]:
    """hh pairs with one bad row of each kind after the rows the driver's probe reads."""
    good = iter(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) for r in hh_rows[:40])
    bad = {
        20: ('{"chosen": "Human: hi Assistant: hello"}', "field 'rejected': missing value"),
        24: ('{"chosen": ["a"], "rejected": "b"}', "field 'chosen': expected a string, got list"),
        28: ('{"chosen": "", "rejected": "b"}', "field 'chosen': empty text"),
        32: ('{"chosen": "a", "rejected": "b", "margin": "big"}', "field 'margin': margin must be a finite number"),
        36: ('{"chosen": "a", "rejected": "b"', "broken JSON line (Expecting ',' delimiter"),
    }
    lines = [bad[n][0] if n in bad else next(good) for n in range(1, 46)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {n: text for n, (_, text) in bad.items()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_rows_stop_the_run_or_are_skipped_and_counted(ray_local, tmp_path, hh_rows, tokenizer):
    path, bad = _bad_rows_file(tmp_path, hh_rows)

    with pytest.raises(BadRowError) as err:
        build_datasets(_cfg(path), TOKENIZER)
    first = min(bad)
    assert str(err.value).startswith(f"{path}, row {first}, ") and bad[first] in str(err.value)

    prepared = build_datasets(_cfg(path, on_bad_rows="skip"), TOKENIZER)
    counts = prepared.train_counts
    assert counts.bad_rows == len(bad) and counts.rows_read == 40 + len(bad)
    assert len(counts.bad_examples) == 5
    for example, number in zip(counts.bad_examples, sorted(bad)):
        assert example.startswith(f"{path}, row {number}") and bad[number] in example
    assert dataset_keys(prepared.train) == expected_keys(hh_rows[:40], tokenizer, "implicit_prompt")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_eval_split_matches_the_hash_rule(ray_local, tmp_path, hh_rows, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", hh_rows)
    prepared = build_datasets(_cfg(path, eval_split=0.3, seed=7), TOKENIZER)

    plan = ReadSpec(resolve_source(str(path)), "implicit_prompt", ColumnNames(), False, False, "eval", 0.3, 7)
    held_out = [r for i, r in enumerate(hh_rows, 1) if plan.in_part(str(path), i)]
    kept = [r for i, r in enumerate(hh_rows, 1) if not plan.in_part(str(path), i)]
    assert 0 < len(held_out) < len(hh_rows) / 2
    assert dataset_keys(prepared.eval) == expected_keys(held_out, tokenizer, "implicit_prompt")
    assert dataset_keys(prepared.train) == expected_keys(kept, tokenizer, "implicit_prompt")
    assert prepared.eval_counts.rows_read + prepared.train_counts.rows_read == len(hh_rows)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_training_workers_see_disjoint_shards_covering_the_data(ray_local, tmp_path, hh_rows, tokenizer):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    path = write_jsonl(tmp_path / "train.jsonl", hh_rows)
    prepared = build_datasets(_cfg(path, max_length=4096), TOKENIZER)
    n = prepared.num_train_pairs
    assert n == len(hh_rows) and n % 2 == 0
    steps = plan_steps(n, num_workers=2, per_worker_batch_size=8)
    out = tmp_path / "seen"
    out.mkdir()

    def loop(config):
        import ray.train

        from rayreward.data import iter_pair_batches

        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard("train")
        seen, batches = [], 0
        for batch in iter_pair_batches(shard, config["pad_id"], 8, seed=0, epoch=0):
            batches += 1
            for side in ("chosen", "rejected"):
                assert batch[f"input_ids_{side}"].shape == batch[f"attention_mask_{side}"].shape
            for c, cm, r, rm in zip(batch["input_ids_chosen"], batch["attention_mask_chosen"],
                                    batch["input_ids_rejected"], batch["attention_mask_rejected"]):
                seen.append([c[cm.bool()].tolist(), r[rm.bool()].tolist()])
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"pairs": seen, "batches": batches}))

    TorchTrainer(
        loop,
        train_loop_config={"pad_id": tokenizer.pad_token_id, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        datasets=prepared.datasets(),
        run_config=RunConfig(name="shards", storage_path=str(tmp_path / "runs")),
    ).fit()

    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    keys = [[pair_key({"input_ids_chosen": c, "input_ids_rejected": r}) for c, r in s["pairs"]] for s in seen]
    assert len(keys[0]) == len(keys[1]) == n // 2 == steps.pairs_per_worker
    assert set(keys[0]).isdisjoint(keys[1])
    assert sorted(keys[0] + keys[1]) == expected_keys(hh_rows, tokenizer, "implicit_prompt", 4096)
    assert [s["batches"] for s in seen] == [steps.steps_per_epoch] * 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_streaming_mode_needs_max_steps_and_counts_after_reading(ray_local, tmp_path, hh_rows, tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", hh_rows)
    prepared = build_datasets(_cfg(path, materialize=False, shuffle="global"), TOKENIZER)
    assert prepared.num_train_pairs is None and not prepared.materialized
    with pytest.raises(ValueError, match="set train.max_steps"):
        plan_steps(prepared.num_train_pairs, num_workers=1, per_worker_batch_size=8)

    seen = []
    for batch in iter_pair_batches(prepared.train, tokenizer, 16, shuffle="global", seed=1):
        assert batch["input_ids_chosen"].shape[1] == batch["input_ids_rejected"].shape[1]
        seen += [pair_key({"input_ids_chosen": c[m.bool()], "input_ids_rejected": r[n.bool()]}) for c, m, r, n in zip(
            batch["input_ids_chosen"], batch["attention_mask_chosen"],
            batch["input_ids_rejected"], batch["attention_mask_rejected"])]
    assert sorted(seen) == expected_keys(hh_rows, tokenizer, "implicit_prompt")
    assert prepared.counts_so_far().pairs == len(seen)


def test_conversational_data_without_a_chat_template_fails_before_ray(tmp_path, hh_rows, tokenizer, minilm_dir):
    import ray

    rows = convert(hh_rows[:8], "conversational")
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    started = ray.is_initialized()
    with pytest.raises(DataFormatError, match="has no chat template; set tokenizer.chat_template .*data.chat_template"):
        build_datasets(_cfg(path), str(minilm_dir))
    assert ray.is_initialized() == started


def test_hub_name_fails_before_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="hub data set name"):
        build_datasets(DataConfig(train="Anthropic/hh-rlhf"), TOKENIZER)
    with pytest.raises(ValueError, match=r"data.max_length: got 0; expected a positive integer"):
        build_datasets(DataConfig(train="x.jsonl", max_length=0), TOKENIZER)
