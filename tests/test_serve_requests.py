"""The reward server's pure pieces: request parsing and the ``serve:`` section (no Ray, no model)."""

from __future__ import annotations

import pytest

from rayreward.config.tree import ConfigError
from rayreward.serve.config import serve_config
from rayreward.serve.requests import RequestError, parse_get_reward, parse_json, parse_score


def test_each_body_kind_maps_to_the_layout_rayreward_score_reads():
    assert parse_get_reward({"query": ["a b"], "prompts": ["a"]}).layout.fmt == "implicit_prompt"
    texts = parse_score({"texts": ["a"], "normalize": True})
    assert (texts.layout.kind, texts.rows, texts.normalize) == ("single", [{"text": "a"}], True)
    answers = parse_score({"prompts": ["Q:"], "responses": [" A"]})
    assert answers.layout.fmt == "explicit_prompt" and answers.rows == [{"prompt": "Q:", "response": " A"}]
    chat = parse_score({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    assert chat.layout.fmt == "conversational"
    pairs = parse_score({"pairs": [{"prompt": "Q:", "chosen": " a", "rejected": " b"}]})
    assert pairs.pairs and pairs.layout.fmt == "explicit_prompt"


@pytest.mark.parametrize("body,field,status", [
    ({"query": ["a", 3]}, "query[1]", 422),
    ({"query": ["a", " "]}, "query[1]", 422),
    ({"query": "a"}, "query", 422),
    ({"query": []}, "query", 422),
    ({"query": ["a"] * 5000}, "query", 413),
    ({"query": ["a"], "extra": 1}, "extra", 422),
    ({"query": ["a"], "normalize": 1}, "normalize", 422),
])
def test_get_reward_errors_name_the_field(body, field, status):
    with pytest.raises(RequestError) as info:
        parse_get_reward(body)
    assert (info.value.field, info.value.status) == (field, status)
    assert info.value.body()["error"].startswith(field)


@pytest.mark.parametrize("body,field", [
    ({}, "body"),
    ({"texts": ["a"], "messages": []}, "body"),
    ({"responses": ["a"]}, "prompts"),
    ({"responses": ["a"], "prompts": ["p", "q"]}, "prompts"),
    ({"texts": ["a"], "prompts": ["p"]}, "prompts"),
    ({"messages": [[{"role": "user"}]]}, "messages[0]"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"pairs": [{"chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b", "prompt": "p"}]}, "pairs[1]"),
    ({"pairs": [{"chosen": "a", "rejected": "b", "margin": 1}]}, "pairs[0].margin"),
    ({"pairs": [{"chosen": "a", "rejected": 2}]}, "pairs[0].rejected"),
])
def test_score_errors_name_the_field(body, field):
    with pytest.raises(RequestError) as info:
        parse_score(body)
    assert info.value.field == field and info.value.status == 422


def test_malformed_json_is_a_400():
    for raw in (b"{no", b"\xff", b"[1]"):
        with pytest.raises(RequestError) as info:
            parse_json(raw)
        assert (info.value.field, info.value.status) == ("body", 400)


def test_serve_section_reports_every_problem_with_suggestions():
    with pytest.raises(ConfigError) as info:
        serve_config({"serve": {"models": [], "port": 0, "batch": {"max_tokenz": 5},
                                "scaling": {"autoscaling": True, "min_replicas": 5, "max_replicas": 2}}})
    assert any("serve.batch.max_tokenz: unknown key; did you mean 'serve.batch.max_tokens'" in p
               for p in info.value.problems)
    with pytest.raises(ConfigError) as info:
        serve_config({"serve": {"models": [], "port": 0, "max_length": 512, "batch": {"max_tokens": 100},
                                "scaling": {"autoscaling": True, "min_replicas": 5, "max_replicas": 2,
                                            "cpus_per_replica": "two"}}})
    assert info.value.problems == ["serve.scaling.cpus_per_replica: got 'two'; expected a number"]
    with pytest.raises(ConfigError) as info:
        serve_config({"serve": {"models": [], "port": 0, "max_length": 512, "batch": {"max_tokens": 100},
                                "scaling": {"autoscaling": True, "min_replicas": 5, "max_replicas": 2}}})
    fields = [p.split(":")[0] for p in info.value.problems]
    assert fields == ["serve.models", "serve.port", "serve.batch.max_tokens", "serve.scaling.min_replicas"]


def test_flags_and_overrides_reach_the_section():
    config = serve_config({"serve": {"models": ["m/rm"]}}, ["serve.scaling.num_replicas=3", "serve.batch.wait_ms=1"])
    assert (config.scaling.num_replicas, config.batch.wait_ms, config.app_name, config.prefix) == (3, 1, "rm", "/rm")
    with pytest.raises(ConfigError, match="unknown section"):
        serve_config({"train": {}, "serve": {"models": ["m"]}})
