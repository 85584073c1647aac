"""RewardTrainer as a drop-in for TRL 1.16's, and for the seed's (older TRL) API.

Tiny Qwen2, Llama and Qwen2-MoE models are built from configs, saved in bf16 (as most
hub checkpoints are) with the bundled tokenizer, and given by folder, as a model id.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from datasets import Dataset, DatasetDict

from conftest import ROOT, read_jsonl
from rayreward import BadRowError, DataCollatorForPreference, RewardConfig, RewardTrainer
from rayreward.data.tokenizer import SAMPLE_DATA_DIR, builtin_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = {
    "qwen2": dict(model_type="qwen2"),
    "llama": dict(model_type="llama"),
    "qwen2_moe": dict(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=32, decoder_sparse_step=1),
}


def save_bf16_checkpoint(arch: str, folder) -> str:
    """A tiny causal-LM checkpoint in bf16 plus its tokenizer, as a hub download would look."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = builtin_tokenizer()
    spec = dict(ARCHS[arch])
    config = AutoConfig.for_model(
        spec.pop("model_type"), vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **spec,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def rows():
    return read_jsonl(SAMPLE_DATA_DIR / "train.jsonl", limit=48)


def args_for(tmp_path, **overrides) -> RewardConfig:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=1e-3, save_strategy="no", report_to=[],
                    disable_tqdm=True, dataloader_pin_memory=False, seed=0)
    settings.update(overrides)
    return RewardConfig(**settings)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def unchanged(model, before) -> list[str]:
    return [n for n, p in model.named_parameters() if p.detach().equal(before[n])]


# -- model by id: tokenizer from the id, float32 master weights ----------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bf16_checkpoint_by_id_trains_every_parameter(arch, tmp_path, rows):
    path = save_bf16_checkpoint(arch, tmp_path / arch)
    trainer = RewardTrainer(model=path, args=args_for(tmp_path), train_dataset=Dataset.from_list(rows))
    model = trainer.model
    assert model.config.num_labels == 1 and "rayreward" in model.model_tags
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert trainer.processing_class.name_or_path == path  # the tokenizer came from the same id
    before = snapshot(model)
    trainer.train()
    assert unchanged(model, before) == []


def test_bf16_compute_keeps_float32_weights_and_explicit_bf16_warns(tmp_path, rows):
    path = save_bf16_checkpoint("qwen2", tmp_path / "qwen2")
    trainer = RewardTrainer(model=path, args=args_for(tmp_path, bf16=True, use_cpu=True),
                            train_dataset=Dataset.from_list(rows))
    before = snapshot(trainer.model)
    trainer.train()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert unchanged(trainer.model, before) == []

    with pytest.warns(UserWarning, match="pure bfloat16 weights.*rounds to nothing"):
        trainer = RewardTrainer(model=path, args=args_for(tmp_path, model_init_kwargs={"dtype": "bfloat16"}),
                                train_dataset=Dataset.from_list(rows[:8]))
    assert next(trainer.model.parameters()).dtype == torch.bfloat16  # asked for: kept, warned


def test_model_errors_match_trl(tmp_path, rows):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tok = builtin_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=4, num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2.*require num_labels=1"):
        RewardTrainer(model=AutoModelForSequenceClassification.from_config(config), args=args_for(tmp_path),
                      processing_class=tok, train_dataset=rows)
    trainer = RewardTrainer(model=save_bf16_checkpoint("llama", tmp_path / "m"), args=args_for(tmp_path),
                            eval_dataset=rows[:4])
    with pytest.raises(ValueError, match="train\\(\\) needs training pairs"):
        trainer.train()


# -- data: every kind TRL accepts ------------------------------------------------------


def test_train_dataset_is_a_dataset_with_trl_columns_and_seed_keys(tmp_path, rows):
    trainer = RewardTrainer(model=save_bf16_checkpoint("llama", tmp_path / "m"), args=args_for(tmp_path),
                            train_dataset=Dataset.from_list(rows))
    ds = trainer.train_dataset
    assert isinstance(ds, Dataset) and sorted(ds.column_names) == ["chosen_ids", "margin", "rejected_ids"]
    tok = trainer.processing_class
    expected = tok(rows[0]["prompt"] + rows[0]["chosen"] + tok.eos_token)["input_ids"]
    assert ds[0]["chosen_ids"] == ds[0]["input_ids_chosen"] == expected
    assert ds[0]["attention_mask_chosen"] == [1] * len(expected) and ds[0]["margin"] == rows[0]["margin"]


def test_trl_pretokenized_data_gives_the_same_batches_as_text(tmp_path, rows):
    tok = builtin_tokenizer()
    ids = [{"chosen_ids": tok(r["prompt"] + r["chosen"] + tok.eos_token)["input_ids"],
            "rejected_ids": tok(r["prompt"] + r["rejected"] + tok.eos_token)["input_ids"],
            "margin": r["margin"]} for r in rows[:16]]
    legacy = [{"chosen_input_ids": p["chosen_ids"], "rejected_input_ids": p["rejected_ids"], "margin": p["margin"]}
              for p in ids]
    path = save_bf16_checkpoint("llama", tmp_path / "m")
    args = args_for(tmp_path)
    from_text = RewardTrainer(model=path, args=args, eval_dataset=Dataset.from_list(rows[:16]))
    from_ids = RewardTrainer(model=path, args=args, eval_dataset=Dataset.from_list(ids))
    with pytest.warns(FutureWarning, match=r"chosen_input_ids.*will stop being read in rayreward 0\.3.*chosen_ids"):
        from_legacy = RewardTrainer(model=path, args=args, eval_dataset=Dataset.from_list(legacy))
    batch = [next(iter(t.get_eval_dataloader())) for t in (from_text, from_ids, from_legacy)]
    for other in batch[1:]:
        assert batch[0].keys() == other.keys()
        for key, value in batch[0].items():
            assert torch.equal(value, other[key]) if isinstance(value, torch.Tensor) else value == other[key], key
    # TRL's collator over the same rows: one concatenated batch, chosen rows first.
    trl_batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)([from_ids.eval_dataset[i] for i in range(16)])
    assert torch.equal(trl_batch["input_ids"], torch.cat([batch[0]["input_ids_chosen"], batch[0]["input_ids_rejected"]]))
    assert torch.equal(trl_batch["margin"], batch[0]["margin"])
    with_trl_collator = RewardTrainer(model=path, args=args, eval_dataset=Dataset.from_list(ids),
                                      data_collator=DataCollatorForPreference(pad_token_id=tok.pad_token_id))
    assert with_trl_collator.evaluate()["eval_loss"] == pytest.approx(from_text.evaluate()["eval_loss"], abs=1e-6)


def test_streaming_train_and_eval_raw_evaluate_and_eval_dicts(tmp_path, rows):
    path = save_bf16_checkpoint("qwen2", tmp_path / "m")
    stream = Dataset.from_list(rows).to_iterable_dataset()
    trainer = RewardTrainer(model=path, args=args_for(tmp_path, max_steps=2), train_dataset=stream,
                            eval_dataset=Dataset.from_list(rows[:16]).to_iterable_dataset())
    before = snapshot(trainer.model)
    trainer.train()
    assert unchanged(trainer.model, before) == []
    assert trainer.length_stats["train_dataset"].pairs >= 16  # counted as the stream is read
    streamed = trainer.evaluate()
    raw = trainer.evaluate(eval_dataset=Dataset.from_list(rows[:16]))
    as_list = trainer.evaluate(eval_dataset=rows[:16])
    assert streamed["eval_loss"] == pytest.approx(raw["eval_loss"], abs=1e-6) == as_list["eval_loss"]
    both = trainer.evaluate(eval_dataset=DatasetDict({"a": Dataset.from_list(rows[:16]), "b": Dataset.from_list(rows[16:32])}))
    assert both["eval_a_loss"] == pytest.approx(raw["eval_loss"], abs=1e-6) and math.isfinite(both["eval_b_loss"])


TOOL_TEMPLATE = (
    "{% if tools %}<|system|>\ntools: {{ tools | tojson }}</s>\n{% endif %}"
    "{% if think %}<|system|>\nthink</s>\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }} {{ c.function.arguments | tojson }}"
    "{% endfor %}{% endif %}{{ m.content or '' }}</s>\n{% endfor %}"
)
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]


def tool_row(answer: str, think: bool):
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    result = {"role": "tool", "content": "sunny, 21 C"}
    return {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
            "chosen": [call, result, {"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": "No idea."}],
            "chat_template_kwargs": {"think": think}}


def test_tool_calls_and_chat_template_kwargs_render_as_the_template_says(tmp_path):
    import json

    path = save_bf16_checkpoint("llama", tmp_path / "m")
    tok = builtin_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    data = [tool_row("It is sunny, 21 C.", think=True), tool_row("Sunny.", think=False)]
    for tools, as_dataset in ((TOOLS, False), (json.dumps(TOOLS), True)):
        rows = [{**r, "tools": tools} for r in data]
        trainer = RewardTrainer(model=path, args=args_for(tmp_path), processing_class=tok,
                                eval_dataset=Dataset.from_list(rows) if as_dataset else rows)
        ds = trainer.eval_dataset
        for i, row in enumerate(data):
            for side in ("chosen", "rejected"):
                expected = tok.apply_chat_template(row["prompt"] + row[side], tools=TOOLS, tokenize=True,
                                                   return_dict=True, **row["chat_template_kwargs"])["input_ids"]
                assert ds[i][f"input_ids_{side}"] == expected
        assert "tools:" in tok.decode(ds[0]["input_ids_chosen"]) and "think" in tok.decode(ds[0]["input_ids_chosen"])
        assert "think" not in tok.decode(ds[1]["input_ids_chosen"])
    bad = [{**data[0], "chosen": [{"role": "robot", "content": "beep"}]}]
    with pytest.raises(BadRowError, match="row 0, field 'chosen'.*role 'robot'"):
        RewardTrainer(model=path, args=args_for(tmp_path), processing_class=tok, eval_dataset=bad)


# -- PEFT: the head PEFT copies is frozen, everything trainable trains ----------------------


@pytest.mark.parametrize("targets", [None, ["gate_proj", "up_proj", "down_proj", "score"]])
def test_peft_trains_every_trainable_parameter_and_freezes_the_replaced_head(targets, tmp_path, rows):
    from peft import LoraConfig

    path = save_bf16_checkpoint("qwen2", tmp_path / "m")
    # TRL's own shapes: LoraConfig() with PEFT's default targets, and one that also names the head.
    config = LoraConfig() if targets is None else LoraConfig(target_modules=targets)
    trainer = RewardTrainer(model=path, args=args_for(tmp_path, learning_rate=1e-2),
                            train_dataset=Dataset.from_list(rows), peft_config=config)
    model = trainer.model
    originals = [n for n, _ in model.named_parameters() if ".original_module." in n]
    assert originals, "the head is wrapped by modules_to_save"
    assert not [n for n, p in model.named_parameters() if ".original_module." in n and p.requires_grad]
    before = snapshot(model)
    trainer.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score.modules_to_save" in n for n in trainable)
    assert not [n for n in unchanged(model, before) if n in trainable]
    # the forward pass reads the copy: the original head and the base weights stay as loaded
    assert set(unchanged(model, before)) == {n for n, _ in model.named_parameters()} - trainable
    in_optimizer = {id(p) for p in trainer.optimizer.state}
    assert not [n for n, p in model.named_parameters() if id(p) in in_optimizer and n not in trainable]
    assert {n for n, p in model.named_parameters() if id(p) in in_optimizer} == trainable


# -- chat_template_path naming a tokenizer: TRL's clone_chat_template ---------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_chatml_tokenizer(folder) -> str:
    """The bundled BPE with a ChatML template and two special tokens it lacks (EOS <|im_end|>)."""
    tok = builtin_tokenizer()
    tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return str(folder)


def test_chat_template_path_naming_a_tokenizer_clones_it_as_trl_does(tmp_path):
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification

    path = save_bf16_checkpoint("llama", tmp_path / "m")
    source = save_chatml_tokenizer(tmp_path / "chatml")
    conversations = [{"prompt": [{"role": "user", "content": "Is the sky blue?"}],
                      "chosen": [{"role": "assistant", "content": "Yes, on a clear day."}],
                      "rejected": [{"role": "assistant", "content": "No."}]}] * 8
    trainer = RewardTrainer(model=path, args=args_for(tmp_path, chat_template_path=source),
                            train_dataset=Dataset.from_list(conversations), peft_config=LoraConfig())
    tok = trainer.processing_class
    model = trainer.model.get_base_model()

    # TRL 1.16's clone on a fresh copy of the same model and tokenizer gives the same result.
    theirs = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    theirs, their_tok, their_added = trl.clone_chat_template(theirs, builtin_tokenizer(), source)
    assert tok.chat_template == their_tok.chat_template == CHATML
    assert tok.get_vocab() == their_tok.get_vocab()
    assert tok.eos_token == their_tok.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == theirs.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    rows = model.config.vocab_size  # the embedding is wrapped by PEFT (trainable token rows)
    assert rows == theirs.get_input_embeddings().num_embeddings == len(tok) and rows % 64 == 0
    assert rows > len(builtin_tokenizer())

    # Conversations are rendered with the cloned template; its tokens are single ids.
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    ids = trainer.train_dataset[0]["input_ids_chosen"]
    assert ids.count(start) == ids.count(end) == 2 and max(ids) < rows
    # As in TRL, the added tokens' embedding rows train under PEFT.
    indices = trainer.model.peft_config["default"].trainable_token_indices
    assert set(indices["embed_tokens"]) == set(their_added) and {start, end} <= set(indices["embed_tokens"])
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_chat_template_path_adding_tokens_needs_a_model(tmp_path):
    from rayreward.core.chat_template import clone_chat_template

    source = save_chatml_tokenizer(tmp_path / "chatml")
    tok = builtin_tokenizer()
    with pytest.raises(ValueError, match=r"adds tokens \['<\|im_end\|>', '<\|im_start\|>'\].*model_init"):
        clone_chat_template(None, tok, source)
    same = builtin_tokenizer()
    same.save_pretrained(tmp_path / "plain")  # the bundled tokenizer already has every token it adds
    assert clone_chat_template(None, tok, str(tmp_path / "plain")) == []
    assert tok.chat_template == builtin_tokenizer().chat_template


# -- same numbers as TRL 1.16 ------------------------------------------------------------


def test_loss_and_accuracy_equal_trl(tmp_path, rows):
    import trl

    path = save_bf16_checkpoint("llama", tmp_path / "m")
    pairs = Dataset.from_list(rows[:32])
    common = dict(per_device_eval_batch_size=32, report_to=[], bf16=False, max_length=1024, disable_tqdm=True,
                  model_init_kwargs={"dtype": "float32"})
    ours = RewardTrainer(model=path, args=RewardConfig(output_dir=str(tmp_path / "a"), **common),
                         train_dataset=pairs, eval_dataset=pairs).evaluate()
    theirs = trl.RewardTrainer(model=path, args=trl.RewardConfig(output_dir=str(tmp_path / "b"), **common),
                               train_dataset=pairs, eval_dataset=pairs).evaluate()
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-5)
    assert ours["eval_accuracy"] == pytest.approx(theirs["eval_accuracy"], abs=1e-6)


# -- scripts: TRL 1.16 docs style and the seed's, unchanged ------------------------------


def run_script(path, capsys, *args: str) -> str:
    """Runs an example as `python path args...` would, in this process (no second start-up of torch)."""
    import runpy

    argv = sys.argv
    sys.argv = [str(path), *args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def all_changed(out: str) -> bool:
    counts = out.split("changed ")[1].split(" parameters")[0].split(" of ")
    return counts[0] == counts[1] and int(counts[0]) > 10


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trl_style_script_runs_unchanged_on_both(tmp_path, capsys):
    path = save_bf16_checkpoint("qwen2", tmp_path / "m")
    script = ROOT / "examples" / "trl_style.py"
    ours = run_script(script, capsys, path, str(tmp_path / "ours"))
    assert all_changed(ours) and "['chosen_ids', 'margin', 'rejected_ids']" in ours
    # The same file with TRL's import: TRL runs it too (the script is TRL's, not ours).
    text = script.read_text()
    assert text.count("from rayreward import") == 1
    swapped = tmp_path / "trl_style.py"
    swapped.write_text(text.replace("from rayreward import", "from trl import").replace(
        "Path(__file__).resolve().parent.parent", f"Path({str(ROOT)!r})"))
    assert all_changed(run_script(swapped, capsys, path, str(tmp_path / "trl")))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seed_style_script_trains_every_parameter(tmp_path, capsys):
    path = save_bf16_checkpoint("llama", tmp_path / "m")
    assert all_changed(run_script(ROOT / "examples" / "seed_style.py", capsys, path, str(tmp_path / "seed")))


# -- through `rayreward train` (Ray worker, DeepSpeed) -----------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bf16_checkpoint_trains_every_parameter_through_rayreward_train(ray_local, tmp_path):
    from safetensors.torch import load_file

    from rayreward.commands.cli import main

    path = save_bf16_checkpoint("qwen2", tmp_path / "m")
    # A pretrained model's job names its pairs (the sample pairs are the demo's default only).
    code = main(["train", f"model.name_or_path={path}", f"data.train={SAMPLE_DATA_DIR / 'train.jsonl'}",
                 "scaling.num_workers=1",
                 "train.max_steps=3", "train.save_steps=3", "train.learning_rate=1e-3", "data.tokenize_actors=1",
                 "deepspeed.stage=2", f"storage.path={tmp_path / 'runs'}", "storage.name=bf16"])
    assert code == 0
    initial = load_file(f"{path}/model.safetensors")
    trained = load_file(str(tmp_path / "runs" / "bf16" / "model" / "model.safetensors"))
    shared = [k for k in initial if k in trained]
    assert len(shared) >= 20
    # Compared in float32: a change below bf16's resolution must still count as a change.
    assert [k for k in shared if trained[k].float().equal(initial[k].float())] == []


# -- config and collator: TRL 1.16's, field by field -------------------------------------


def test_reward_config_has_every_trl_field_with_its_default(tmp_path):
    import dataclasses

    import trl
    from transformers import TrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    trl_own = {f.name for f in dataclasses.fields(trl.RewardConfig)} - base
    assert trl_own >= {"model_init_kwargs", "chat_template_path", "activation_offloading", "pad_to_multiple_of"}
    ours = RewardConfig(output_dir=str(tmp_path), report_to=[])
    theirs = trl.RewardConfig(output_dir=str(tmp_path), report_to=[], bf16=False)
    for name in sorted(trl_own):
        assert getattr(ours, name) == getattr(theirs, name), name
    parsed = RewardConfig(output_dir=str(tmp_path), report_to=[], model_init_kwargs='{"dtype": "float32"}',
                          pad_to_multiple_of="8")
    assert parsed.model_init_kwargs == {"dtype": "float32"} and parsed.pad_to_multiple_of == 8
    # A copy through to_dict() (which masks every "*_token" field) keeps eos/pad unset.
    assert RewardConfig(**ours.to_dict()).eos_token is None


def test_data_collator_for_preference_matches_trl():
    from trl.trainer.reward_trainer import DataCollatorForPreference as TRLCollator

    examples = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4, 5], "margin": 0.5},
                {"chosen_ids": [6, 7], "rejected_ids": [8], "margin": 0.0}]
    for multiple in (None, 4):
        ours = DataCollatorForPreference(pad_token_id=0, pad_to_multiple_of=multiple)(examples)
        theirs = TRLCollator(pad_token_id=0, pad_to_multiple_of=multiple)(examples)
        assert ours.keys() == theirs.keys() == {"input_ids", "attention_mask", "margin"}
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
    assert DataCollatorForPreference(pad_token_id=9)(examples)["input_ids"].tolist() == [
        [1, 2, 3], [6, 7, 9], [4, 5, 9], [8, 9, 9]]
