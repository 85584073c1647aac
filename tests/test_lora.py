"""LoRA through ``peft_config``: only the adapter and the reward head train, and a saved
adapter reloads to the same rewards."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from rayreward import RewardConfig

from rayreward import RewardTrainer

from rayreward.core import tiny
from rayreward.data.tokenizer import SAMPLE_DATA_DIR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rows():
    from conftest import read_jsonl

    return read_jsonl(SAMPLE_DATA_DIR / "train.jsonl", limit=96)


def rewards(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids_chosen"], attention_mask=batch["attention_mask_chosen"]).logits
    return out[:, 0]


def test_lora_trains_adapter_and_head_and_reloads_identically(tmp_path, tokenizer, rows):
    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2, seed=0)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    # no task type and no modules_to_save: the trainer must add both
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    args = RewardConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-2, num_train_epochs=1,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_pin_memory=False, logging_steps=2,
    )
    trainer = RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows[:16],
                            peft_config=peft_config)
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel)
    assert peft_model.peft_config["default"].task_type == "SEQ_CLS"

    trainable = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any("score" in n and "modules_to_save" in n for n in trainable)

    trainer.train()  # with activation checkpointing, the default

    unchanged = [n for n, p in peft_model.named_parameters() if p.requires_grad and torch.equal(p, trainable[n])]
    assert not unchanged, unchanged
    frozen_changed = [
        n for n, p in peft_model.base_model.model.named_parameters()
        if not p.requires_grad and n in base_weights and not torch.equal(p, base_weights[n])
    ]
    assert not frozen_changed, frozen_changed

    out_dir = tmp_path / "adapter"
    trainer.save_model(str(out_dir))
    saved = load_file(str(out_dir / "adapter_model.safetensors"))
    assert any("score" in k for k in saved), sorted(saved)
    assert "score" in json.loads((out_dir / "adapter_config.json").read_text())["modules_to_save"]

    batch = next(iter(trainer.get_eval_dataloader()))
    expected = rewards(peft_model, batch)

    fresh_base = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2, seed=0)
    reloaded = PeftModel.from_pretrained(fresh_base, str(out_dir))
    torch.testing.assert_close(rewards(reloaded, batch), expected)
    # the head matters: the base model's own head gives other rewards
    assert not torch.allclose(rewards(tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2,
                                                       seed=0), batch), expected)


def test_peft_config_with_model_init_is_refused(tmp_path, tokenizer, rows):
    with pytest.raises(ValueError, match="peft_config needs model="):
        RewardTrainer(model_init=lambda: tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=1),
                      args=RewardConfig(output_dir=str(tmp_path), report_to=[]), tokenizer=tokenizer,
                      train_dataset=rows[:4], peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
