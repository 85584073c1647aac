"""Block-sparse attention backends for packed pairs: exact against separate passes.

Each backend that runs on this device is checked the way tests/test_packing.py checks
the dense path: rewards and the gradients of the pairwise loss equal those of every
sequence through the model alone. flex attention has no CPU backward in torch 2.13, so
on CPU it is checked forward only; the CUDA checks (varlen, flex training, bf16) skip
without a GPU and run in benchmarks/gpu_check.sh's exactness step.
"""

from __future__ import annotations

import pytest
import torch

from rayreward import RewardConfig
from rayreward.core.attention import WRAPPED, backend_problem, install, resolve_backend
from rayreward.core.packed import packed_rewards
from rayreward.data.packing import pack_pairs

from test_packing import LAYOUTS, assert_same, decoder, random_pairs, rewards_and_grads, separate_rewards, trainer_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.mark.parametrize("backend", ["segment", "banded"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])  # qwen2: grouped-query attention
@pytest.mark.parametrize("share_prefix,padding_free", LAYOUTS)
def test_cpu_backends_equal_separate_passes(backend, arch, share_prefix, padding_free, tokenizer):
    model = decoder(arch, tokenizer)
    pairs = random_pairs(7)
    batch = pack_pairs(pairs, tokenizer.pad_token_id, share_prefix=share_prefix, padding_free=padding_free)
    expected = rewards_and_grads(model, lambda: separate_rewards(model, pairs))
    assert_same(rewards_and_grads(model, lambda: packed_rewards(model, batch, backend)), expected)
    assert model.config._attn_implementation == WRAPPED


@pytest.mark.parametrize("backend", ["segment", "banded"])
def test_cpu_backends_under_activation_checkpointing(backend, tokenizer, hh_pairs):
    """Recomputed layers in the backward pass must see the packed layout again."""
    model = decoder("llama", tokenizer)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    expected = rewards_and_grads(model, lambda: separate_rewards(model, hh_pairs))
    batch = pack_pairs(hh_pairs, tokenizer.pad_token_id)
    assert_same(rewards_and_grads(model, lambda: packed_rewards(model, batch, backend)), expected)


def test_bands_cover_every_visible_key_and_skip_most_hidden_ones(tokenizer, hh_pairs):
    """Real text makes rows of several bands: each band's keys hold all its queries can see."""
    from rayreward.core.attention import BAND, build_layout
    from rayreward.data.packing import packed_attention_mask

    batch = pack_pairs(hh_pairs, tokenizer.pad_token_id)
    layout = build_layout(batch, "banded")
    mask = packed_attention_mask(batch["packed_sequence_ids"], batch["packed_branch_ids"])
    bands = layout.bands()
    assert layout.length > 2 * BAND and len(bands) >= 2, layout.length
    assert [a for a, *_ in bands] + [bands[-1][1]] == sorted({a for a, *_ in bands} | {layout.length})
    computed = 0
    for a, b, k, block in bands:
        assert not mask[:, :, a:b, :k].any() and not mask[:, :, a:b, b:].any()
        assert torch.equal(block, mask[:, :, a:b, k:b])
        computed += (b - a) * (b - k)
    assert computed < 0.8 * layout.length ** 2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_flex_backend_scores_exactly_on_any_device(arch, tokenizer):
    model = decoder(arch, tokenizer)
    pairs = random_pairs(6, seed=2)
    with torch.no_grad():
        expected = torch.stack(separate_rewards(model, pairs), 1)
        for share_prefix, padding_free in LAYOUTS:
            batch = pack_pairs(pairs, tokenizer.pad_token_id, share_prefix=share_prefix, padding_free=padding_free)
            got = torch.stack(packed_rewards(model, batch, "flex"), 1)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_installed_attention_leaves_plain_calls_and_exports_unchanged(tokenizer, tmp_path):
    model = decoder("llama", tokenizer)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, tokenizer.pad_token_id, tokenizer.pad_token_id]])
    mask = (ids != tokenizer.pad_token_id).long()
    before = model(input_ids=ids, attention_mask=mask).logits
    install(model)
    install(model)  # idempotent
    assert model.config._attn_implementation == WRAPPED
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)
    model.save_pretrained(tmp_path)
    assert WRAPPED not in (tmp_path / "config.json").read_text()


def test_backend_choice_per_device_and_model(tokenizer):
    model = decoder("llama", tokenizer)
    cpu = torch.device("cpu")
    assert resolve_backend(model, "auto", cpu) == "banded"
    assert resolve_backend(model, "segment", cpu) == "segment"
    assert resolve_backend(model, "auto", torch.device("cuda"), half=False) == "segment"  # flash needs bf16/fp16
    assert resolve_backend(model, "auto", torch.device("cuda")) == "varlen"
    assert resolve_backend(model, "dense", cpu) == "dense"
    with pytest.raises(ValueError, match="varlen attention needs a CUDA device"):
        resolve_backend(model, "varlen", cpu)
    with pytest.raises(ValueError, match="expected one of auto, dense"):
        resolve_backend(model, "fast", cpu)
    eager = decoder("llama", tokenizer, attn="eager")
    assert resolve_backend(eager, "auto", cpu) == "dense"  # eager keeps its own attention
    assert "attn_implementation='eager'" in backend_problem(eager, "segment", cpu)
    with pytest.raises(ValueError, match="attention_backend: got 'fast'"):
        RewardConfig(output_dir="unused", report_to=[], attention_backend="fast")


def test_training_with_each_cpu_backend_equals_the_dense_backend(tokenizer, hh_pairs, tmp_path):
    weights = []
    for backend in ("dense", "segment", "banded"):
        model = decoder("llama", tokenizer)
        trainer = trainer_for(model, tokenizer, hh_pairs, tmp_path / backend, optim="sgd", learning_rate=0.5,
                              attention_backend=backend)
        trainer.train()
        assert (model.config._attn_implementation == WRAPPED) == (backend != "dense")
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for other in weights[1:]:
        for name in weights[0]:
            torch.testing.assert_close(other[name], weights[0][name], rtol=1e-4, atol=1e-5)


# -- CUDA only: run where a GPU is (benchmarks/gpu_check.sh runs these too) ------------


@needs_cuda
@pytest.mark.parametrize("backend", ["varlen", "flex", "segment", "banded", "dense"])
@pytest.mark.parametrize("share_prefix,padding_free", LAYOUTS)
def test_cuda_backends_train_exactly_in_bf16(backend, share_prefix, padding_free, tokenizer):
    model = decoder("qwen2", tokenizer).to("cuda", torch.bfloat16)
    problem = backend_problem(model, backend, torch.device("cuda"))
    if problem:
        pytest.skip(problem)
    pairs = random_pairs(7)
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in
             pack_pairs(pairs, tokenizer.pad_token_id, share_prefix=share_prefix, padding_free=padding_free).items()}

    def separate():
        out = [model(input_ids=torch.tensor([p[f"input_ids_{s}"]], device="cuda")).logits[0, 0].float()
               for p in pairs for s in ("chosen", "rejected")]
        rewards = torch.stack(out).view(-1, 2)
        return rewards[:, 0], rewards[:, 1]

    expected = rewards_and_grads(model, separate)
    got = rewards_and_grads(model, lambda: packed_rewards(model, batch, backend))
    # bf16: kernels that sum in another order differ by a few units of bf16's 8-bit mantissa.
    bf16 = dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(got[0].float(), expected[0].float(), **bf16)
    for name in expected[1]:
        torch.testing.assert_close(got[1][name].float(), expected[1][name].float(), **bf16)


@pytest.fixture(scope="module")
def hh_pairs(hh_dir):
    from conftest import read_jsonl
    from rayreward.core.trainer import tokenize_pairs
    from rayreward.data.tokenizer import builtin_tokenizer

    rows = read_jsonl(hh_dir / "train.jsonl", limit=6)
    dataset, _ = tokenize_pairs(rows, builtin_tokenizer(), max_length=None)
    return dataset.pairs
