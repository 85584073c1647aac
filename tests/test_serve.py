"""``rayreward serve``: real Ray Serve on 127.0.0.1, real HTTP.

One Ray and one Serve for the whole module (starting Serve costs tens of seconds on a
busy 2-core machine): a two-replica application ``rm`` (a tiny Llama with stored reward
statistics) and a one-replica ensemble ``ens`` (two tiny Llamas, truncation off at 24
tokens). The replica-kill test runs last.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TEXTS = [
    "Human: How do I boil an egg?\n\nAssistant: Put it in boiling water for nine minutes.",
    "Human: Any tips for sleep?\n\nAssistant: Keep a regular bedtime and a dark, quiet room.",
    "Hello!",
    "Human: Hi\n\nAssistant: " + "very " * 40 + "long answer.",
]
PROMPTS = ["Human: How do I boil an egg?\n\nAssistant:", "Human: Hi\n\nAssistant:"]
RESPONSES = [" Nine minutes in boiling water.", " Hello! How can I help?"]
CONVERSATIONS = [
    [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Nine minutes."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
]
SHORT = ["Hello!", "A fine answer.", "No."]  # under the ensemble's 24-token limit
MEAN, STD = 0.25, 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_model(path, seed: int):
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    tiny.build_model("tiny-llama", tok, hidden_size=32, num_layers=2, seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rayreward.evaluation.ensemble import write_ensemble
    from rayreward.evaluation.normalization import save_normalization

    from group_data import export_rated_model

    root = tmp_path_factory.mktemp("serve-models")
    a, b = _save_model(root / "ens" / "a", 3), _save_model(root / "ens" / "b", 4)
    save_normalization(a, MEAN, STD, source="test")
    write_ensemble(root / "ens", ["a", "b"], source="test")
    # Two three-attribute models (trained 4 and 6 steps on sample ratings) as one ensemble.
    x, _ = export_rated_model(root / "attrs" / "x", steps=4)
    y, _ = export_rated_model(root / "attrs" / "y", steps=6)
    write_ensemble(root / "attrs", ["x", "y"], source="test")
    return {"a": a, "b": b, "ensemble": root / "ens", "attrs": root / "attrs", "x": x, "y": y}


@pytest.fixture(scope="module")
def served(models):
    import ray
    from ray import serve

    from rayreward.serve.app import launch
    from rayreward.serve.config import serve_config

    # A loaded machine can take longer than Ray's default to register the node's agent.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    for attempt in range(5):
        try:
            ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level="WARNING", log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - Ray's node start-up timeout under load; the fifth one is raised
            ray.shutdown()
            if attempt == 4:
                raise
    port = _free_port()
    common = {"port": port, "batch": {"wait_ms": 20}}
    rm = launch(serve_config({"serve": {**common, "models": [str(models["a"])], "name": "rm",
                                        "scaling": {"num_replicas": 2, "cpus_per_replica": 0.5}}}))
    ens = launch(serve_config({"serve": {**common, "models": [str(models["ensemble"])], "name": "ens",
                                         "max_length": 24, "truncation": False, "conservative_k": 2.0,
                                         "scaling": {"cpus_per_replica": 0.5}}}))
    attrs = launch(serve_config({"serve": {**common, "models": [str(models["attrs"])], "name": "attrs",
                                           "scaling": {"cpus_per_replica": 0.5}}}))
    yield {"rm": rm, "ens": ens, "attrs": attrs}
    serve.shutdown()
    ray.shutdown()


def _post(url: str, body, retries: int = 0) -> requests.Response:
    for attempt in range(retries + 1):
        try:
            r = requests.post(url, json=body, timeout=60)
            if r.status_code < 500 or attempt == retries:
                return r
        except requests.ConnectionError:
            if attempt == retries:
                raise
        time.sleep(0.5)
    raise AssertionError("unreachable")


def _offline(tmp_path, model, rows, **kwargs):
    """``rayreward score`` (its Python API, on the module's Ray) over ``rows``."""
    import pyarrow.parquet as pq

    from rayreward.evaluation.score import ActorPool, score, scoring_session

    src, out = tmp_path / f"in-{len(os.listdir(tmp_path))}.jsonl", tmp_path / f"out-{len(os.listdir(tmp_path))}.parquet"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with scoring_session():
        score(model, str(src), out, pool=ActorPool(cpus_per_actor=0.5), **kwargs)
    return pq.read_table(out).column("reward").to_numpy()


# The module's Ray and Serve start inside this test's timeout (about a minute on two idle
# cores; several on a machine loaded ten times over).
@pytest.mark.timeout(900)
def test_rewards_equal_rayreward_score_normalized_and_not(served, models, tmp_path):
    url = served["rm"].url
    texts = _offline(tmp_path, models["a"], [{"text": t} for t in TEXTS])
    normalized = _offline(tmp_path, models["a"], [{"text": t} for t in TEXTS], normalize=True)
    # Prompt + response and chat rows: the scorer class `rayreward score`'s actors run, here
    # in-process (two more Ray Data runs would add a minute to the suite).
    answers = _in_process(models["a"], [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)])
    chats = _in_process(models["a"], [{"messages": m} for m in CONVERSATIONS])
    np.testing.assert_allclose(normalized, (texts - MEAN) / STD, atol=1e-6)

    got = _post(f"{url}/get_reward", {"query": TEXTS, "prompts": ["x"] * len(TEXTS)}).json()
    np.testing.assert_allclose(got["rewards"], texts, atol=1e-5)
    got = _post(f"{url}/get_reward", {"query": TEXTS, "normalize": True}).json()
    np.testing.assert_allclose(got["rewards"], normalized, atol=1e-5)
    assert got["normalized"] is True
    np.testing.assert_allclose(_post(f"{url}/score", {"texts": TEXTS}).json()["rewards"], texts, atol=1e-5)
    np.testing.assert_allclose(_post(f"{url}/score", {"texts": TEXTS, "normalize": True}).json()["rewards"],
                               normalized, atol=1e-5)
    np.testing.assert_allclose(_post(f"{url}/score", {"prompts": PROMPTS, "responses": RESPONSES}).json()["rewards"],
                               answers, atol=1e-5)
    np.testing.assert_allclose(_post(f"{url}/score", {"messages": CONVERSATIONS}).json()["rewards"], chats, atol=1e-5)
    # The Ray handle gives the same numbers as HTTP.
    by_handle = served["rm"].handle.score.remote({"texts": TEXTS}).result()
    np.testing.assert_allclose(by_handle["rewards"], texts, atol=1e-5)
    info = requests.get(f"{url}/info", timeout=30).json()
    assert info["name"] == "rm" and info["members"][0]["normalization"]["mean"] == MEAN
    assert info["max_length"] > 0 and info["members"][0]["version"]
    assert requests.get(f"{url}/health", timeout=30).json() == {"status": "ok"}


def _in_process(model, rows):
    from rayreward.evaluation.scorer import RewardScorer, detect_layout

    layout = detect_layout(list(rows[0]), rows[0])
    return np.asarray(RewardScorer(model, layout).score_rows(rows)[0]["reward"])


@pytest.mark.timeout(300)
def test_pairs_give_evaluate_accuracy(served, models, hh_dir):
    from rayreward.evaluation.evaluate import evaluate
    from rayreward.evaluation.score import ActorPool, scoring_session

    pairs = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in read_jsonl(hh_dir / "test.jsonl", 48)]
    with scoring_session():
        result = evaluate(models["a"], _pairs_file(pairs), pool=ActorPool(cpus_per_actor=0.5))
    got = _post(f"{served['rm'].url}/score", {"pairs": pairs}).json()
    np.testing.assert_allclose(got["reward_chosen"], result.rewards_chosen, atol=1e-5)
    np.testing.assert_allclose(got["reward_rejected"], result.rewards_rejected, atol=1e-5)
    accuracy = float(np.mean(np.asarray(got["p_chosen"]) > 0.5))
    assert accuracy == pytest.approx(result.metrics["accuracy"])
    diff = np.asarray(got["reward_chosen"]) - np.asarray(got["reward_rejected"])
    np.testing.assert_allclose(got["p_chosen"], 1 / (1 + np.exp(-diff)), atol=1e-9)


def _pairs_file(pairs) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".jsonl", prefix="serve-pairs-")
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    return path


@pytest.mark.timeout(300)
def test_1000_requests_from_32_clients_all_answered_in_batches(served, hh_dir):
    url = served["rm"].url
    rows = [{"text": t} for t in read_jsonl(hh_dir / "test.jsonl", 50) for t in (t["chosen"][-300:],)]
    texts = [r["text"] for r in rows]
    before = _stats(url)

    def client(k: int) -> list[float]:
        session = requests.Session()
        out = []
        for i in range(k, 1000, 32):
            r = session.post(f"{url}/get_reward", json={"query": [texts[i % len(texts)]]}, timeout=120)
            assert r.status_code == 200, r.text
            out.append((i, r.json()["rewards"][0]))
        return out

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = [a for part in pool.map(client, range(32)) for a in part]
    assert sorted(i for i, _ in answers) == list(range(1000))
    # The same text gets the same reward whatever batch it rode in.
    by_text: dict[int, set] = {}
    for i, reward in answers:
        by_text.setdefault(i % len(texts), set()).add(round(reward, 5))
    assert all(len(v) == 1 for v in by_text.values())
    after = _stats(url)
    texts_done = sum(after[r]["texts"] - before.get(r, {"texts": 0})["texts"] for r in after)
    batches = sum(after[r]["batches"] - before.get(r, {"batches": 0})["batches"] for r in after)
    assert texts_done == 1000 and batches < 1000, (texts_done, batches)
    assert max(s["largest_batch"] for s in after.values()) > 1


def _stats(url: str, replicas: int = 2) -> dict[str, dict]:
    """``/stats`` of every replica. Serve routes a request to the less busy of two replicas,
    so one at a time may keep landing on the same one: ask 16 at once until both answered."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        while len(seen) < replicas:
            assert time.monotonic() < deadline, f"/stats reached only replicas {sorted(seen)}"
            for s in pool.map(lambda _: requests.get(f"{url}/stats", timeout=30).json(), range(16)):
                seen[s["replica"]] = s
    return seen


@pytest.mark.timeout(120)
def test_client_example_runs_over_http_and_the_handle(served, capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "serve_client.py")
    spec = importlib.util.spec_from_file_location("example_serve_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.over_http(served["rm"].url)
    module.over_handle("rm", "unused: Ray is running")
    out = capsys.readouterr().out
    assert out.count("'rewards': [") >= 4 and out.count("'p_chosen': [") == 2
    assert "'status': 422" in out and "texts[1]" in out


BAD = [
    (b"{not json", "/score", 400, "body"),
    (b"[1, 2]", "/score", 400, "body"),
    ({"queries": ["hi"]}, "/get_reward", 422, "queries"),
    ({"prompts": ["hi"]}, "/get_reward", 422, "query"),
    ({"query": "hi"}, "/get_reward", 422, "query"),
    ({"query": ["ok", 3]}, "/get_reward", 422, "query[1]"),
    ({"query": ["ok", "  "]}, "/get_reward", 422, "query[1]"),
    ({"query": []}, "/get_reward", 422, "query"),
    ({"texts": ["a"], "pairs": []}, "/score", 422, "body"),
    ({"pairs": [{"chosen": "a", "rejected": ""}]}, "/score", 422, "pairs[0].rejected"),
    ({"pairs": [{"chosen": "a"}]}, "/score", 422, "pairs[0].rejected"),
    ({"responses": ["a", "b"], "prompts": ["p"]}, "/score", 422, "prompts"),
    ({"messages": [[{"role": "user"}]]}, "/score", 422, "messages[0]"),
    ({"texts": ["a"], "normalize": "yes"}, "/score", 422, "normalize"),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("body,route,status,field", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_request_gets_4xx_naming_the_field_and_the_server_keeps_serving(served, body, route, status, field):
    url = served["rm"].url + route
    if isinstance(body, bytes):
        r = requests.post(url, data=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = requests.post(url, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(field)
    assert _post(f"{served['rm'].url}/get_reward", {"query": ["still here"]}).status_code == 200


@pytest.mark.timeout(120)
def test_overlong_text_with_truncation_off_and_normalize_without_stats_are_4xx(served):
    url = served["ens"].url
    r = _post(f"{url}/score", {"texts": ["short", "word " * 60]})
    assert r.status_code == 422 and r.json()["field"] == "texts[1]" and "truncation is off" in r.json()["error"]
    r = _post(f"{url}/score", {"texts": ["short"], "normalize": True})
    assert r.status_code == 422 and r.json()["field"] == "normalize"
    assert _post(f"{url}/score", {"texts": ["short"]}).status_code == 200


@pytest.mark.timeout(120)
def test_ensemble_mean_and_std_equal_the_members_scored_separately(served, models):
    from rayreward.evaluation.scorer import RewardScorer, detect_layout

    texts, layout = SHORT, detect_layout(["text"], {"text": "x"})
    members = []
    for name in ("a", "b"):
        scorer = RewardScorer(models[name], layout, max_length=24)
        members.append(scorer.score_rows([{"text": t} for t in texts])[0]["reward"])
    got = _post(f"{served['ens'].url}/score", {"texts": texts}).json()
    stacked = np.stack(members)
    np.testing.assert_allclose(got["members"], stacked, atol=1e-5)
    np.testing.assert_allclose(got["rewards"], stacked.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(got["std"], stacked.std(axis=0), atol=1e-5)
    np.testing.assert_allclose(got["conservative"], stacked.mean(axis=0) - 2.0 * stacked.std(axis=0), atol=1e-5)
    # The rm application serves member a alone: its rewards are the ensemble's first member.
    np.testing.assert_allclose(_post(f"{served['rm'].url}/score", {"texts": texts}).json()["rewards"], members[0],
                               atol=1e-5)
    info = requests.get(f"{served['ens'].url}/info", timeout=30).json()
    assert info["ensemble"] and len(info["members"]) == 2 and info["max_length"] == 24


@pytest.mark.timeout(240)
def test_killed_replica_is_replaced_while_requests_are_answered(served):
    from ray import serve

    url = served["rm"].url
    before = _stats(url)
    victim = next(iter(before.values()))
    os.kill(victim["pid"], signal.SIGKILL)
    answered = 0
    deadline = time.time() + 150
    while time.time() < deadline:
        r = _post(f"{url}/get_reward", {"query": ["are you there?"]}, retries=5)
        assert r.status_code == 200, r.text
        answered += 1
        status = serve.status().applications["rm"]
        running = status.deployments["rm"].replica_states.get("RUNNING", 0)
        if answered >= 20 and running == 2 and status.status == "RUNNING":
            now = _stats(url)
            if len(now) == 2 and victim["replica"] not in now:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"the killed replica was not replaced in time ({answered} requests answered)")
    assert victim["pid"] not in {s["pid"] for s in _stats(url).values()}


def test_tune_exports_its_top_trials_as_an_ensemble_serve_reads(models, tmp_path):
    from rayreward.evaluation.ensemble import read_ensemble
    from rayreward.serve.engine import resolve_members
    from rayreward.tune.report import export_ensemble

    rows = [
        {"trial": "t0", "eval_accuracy": 0.60, "best_checkpoint": str(models["a"])},
        {"trial": "t1", "eval_accuracy": 0.75, "best_checkpoint": str(models["b"])},
        {"trial": "t2", "eval_accuracy": None, "best_checkpoint": None},
        {"trial": "t3", "eval_accuracy": 0.70, "best_checkpoint": str(models["a"])},
    ]
    dest = tmp_path / "ensemble"
    assert export_ensemble(rows, "eval_accuracy", "max", 2, str(dest)) == ["t1", "t3"]
    members = read_ensemble(dest)
    assert [m.name for m in members] == ["member-0-t1", "member-1-t3"]
    assert [Path(m.path) for m in resolve_members([str(dest)])] == members
    # The exported members are the trials' models: same weights, so same config file.
    assert json.loads((members[0] / "config.json").read_text())["hidden_size"] == 32


def test_kuberay_rayservice_manifest_builds_a_valid_serve_section():
    import importlib

    import yaml

    from rayreward.serve.config import serve_config

    root = os.path.join(os.path.dirname(__file__), "..", "cluster", "kuberay", "rayservice-serve.yaml")
    with open(root, encoding="utf-8") as f:
        manifest = yaml.safe_load(f)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    serve_file = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve_file["applications"]
    module, _, name = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    config = serve_config({"serve": app["args"]})  # raises ConfigError on any bad key or value
    assert config.prefix == app["route_prefix"] and config.scaling.gpus_per_replica == 1
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert max(g["maxReplicas"] for g in groups) >= config.scaling.max_replicas


def test_serve_binds_loopback_on_an_embedded_ray_and_all_interfaces_only_on_a_cluster(ray_local):
    # Unset, the host follows the Ray it runs on: this session's Ray is all on 127.0.0.1, so
    # Serve stays there (a cluster off loopback gets 0.0.0.0; tests never bind off loopback).
    from rayreward.runtime.ray_session import on_loopback
    from rayreward.serve.app import bind_host
    from rayreward.serve.config import serve_config

    config = serve_config({"serve": {"models": ["runs/rm/model"]}})
    assert config.host is None and on_loopback()
    assert bind_host(config) == "127.0.0.1"
    assert bind_host(serve_config({"serve": {"models": ["runs/rm/model"], "host": "::1"}})) == "::1"


def test_three_attribute_ensemble_returns_each_attribute_and_the_combination(served, models):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from group_data import THREE, THREE_WEIGHTS

    url = served["attrs"].url
    body = _post(f"{url}/score", {"texts": TEXTS[:2]}).json()
    members = []
    for m in ("x", "y"):
        model = AutoModelForSequenceClassification.from_pretrained(models[m]).eval()
        tok = AutoTokenizer.from_pretrained(models[m])
        with torch.no_grad():
            members.append([model(**tok(t + tok.eos_token, return_tensors="pt")).logits[0].tolist() for t in TEXTS[:2]])
    mean = torch.tensor(members, dtype=torch.float64).mean(0)  # texts x attributes
    assert list(body["attributes"]) == THREE
    for a, name in enumerate(THREE):
        assert body["attributes"][name] == pytest.approx(mean[:, a].tolist(), abs=1e-5)
    combined = (mean @ torch.tensor(THREE_WEIGHTS, dtype=torch.float64)).tolist()
    assert body["rewards"] == pytest.approx(combined, abs=1e-5)
    # OpenRLHF's /get_reward: the combined reward only
    reward = _post(f"{url}/get_reward", {"query": TEXTS[:2]}).json()
    assert reward["rewards"] == pytest.approx(combined, abs=1e-5) and "attributes" not in reward
    info = requests.get(f"{url}/info", timeout=30).json()
    assert info["attributes"] == THREE and info["attribute_weights"] == THREE_WEIGHTS
