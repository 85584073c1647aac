"""Attention over packed pairs that computes only what the packed mask keeps.

A packed row (``rayreward.data.packing``) holds units of one pair each: the shared
prefix, the chosen continuation, the rejected one. The dense path hands the model a
``rows x T x T`` mask, so every masked-out block (other pairs, the other branch, the
upper triangle) is still computed, and on a GPU such a mask rules out the flash
kernels. The backends here skip that work and give the same result:

``segment`` (any device; the default on accelerators without ``varlen``)
    Per unit, two ``scaled_dot_product_attention`` calls: prefix + chosen, causal, with
    no mask (the flash kernel, which skips the upper triangle), and the rejected tokens
    against the prefix and themselves (a small lower-right causal mask).
``varlen`` (CUDA; the default there)
    The same two kinds of spans, gathered over the whole batch into two calls of
    torch's own varlen flash attention (``torch.nn.attention.varlen``); no
    ``flash-attn`` package.
``flex``
    ``torch.nn.attention.flex_attention`` with a block mask built from the sequence and
    branch ids. torch 2.13 runs its backward on CUDA only, so on CPU it serves
    evaluation and scoring (no gradients).
``banded`` (the CPU default)
    The 4D boolean mask in a few batched calls per layer: the queries are cut into
    blocks of ``BAND`` tokens, and each block attends only to the keys it can see at
    all (from the start of the earliest unit it touches, in any row, to its own last
    token). A packed row is as long as the batch's longest unit, so a whole-row mask
    makes every token pay for keys of other units and of the future; the bands skip
    most of that while keeping each call as large as the dense one's rows.
``dense``
    The 4D boolean mask, through the model's own sdpa/eager attention: the fallback
    (eager attention, models that cannot change their attention function).

The backends plug in through ``transformers``' public ``AttentionInterface``: the
model's sdpa attention is replaced (once, ``install``) by ``rayreward_sdpa``, which runs
a backend when the call carries a ``PackedLayout`` (keyword ``rayreward_layout``, which
transformers passes down to every attention layer) and is plain sdpa otherwise, so
evaluation, gradient-checkpoint recomputation and export see the model unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rayreward.core.config import ATTENTION_BACKENDS
from rayreward.runtime._framework_internals import loaded_attention, takes_attention_interface

logger = logging.getLogger(__name__)

# One list, kept by the config so that reading it imports no torch code.
BACKENDS = ATTENTION_BACKENDS
WRAPPED = "rayreward_sdpa"
LAYOUT_KEY = "rayreward_layout"
# Backends that read only the sequence and branch ids, so they take ranked groups
# (``pack_groups``, no pair units) as well as pairs; the others split a pair's branches.
ANY_UNIT = ("banded", "flex")
# Query block of the banded backend. Measured on the benchmark decoder's packed hh-rlhf
# batches (rows of 400-650 tokens; benchmarks/RESULTS.md, "Per-token cost by kernel"):
# 128 and 256 took the same time, 64 more than no bands at all (too many calls).
BAND = 128


@dataclass
class PackedLayout:
    """Where each unit of a packed batch sits, plus what the backends derive from it.

    Attributes:
        units: per unit ``(row, start, prefix_end, chosen_end, end)``: its prefix is
            columns ``start:prefix_end``, chosen ``prefix_end:chosen_end``, rejected
            ``chosen_end:end``.
        rows, length: the shape of the packed batch.
        backend: the backend this layout is for.
    """

    units: list[tuple[int, int, int, int, int]]
    rows: int
    length: int
    backend: str
    device: torch.device
    sequence_ids: torch.Tensor | None = None
    branch_ids: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def block_mask(self):
        """The flex-attention ``BlockMask`` of the batch (built once, on its device)."""
        if "block_mask" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            seq, branch = self.sequence_ids, self.branch_ids

            def keep(b, h, q, kv):
                visible = (branch[b, kv] == 0) | (branch[b, kv] == branch[b, q])
                return (seq[b, q] == seq[b, kv]) & visible & (q >= kv)

            self._cache["block_mask"] = create_block_mask(
                keep, self.rows, None, self.length, self.length, device=self.device,
            )
        return self._cache["block_mask"]

    def row_units(self, row: int) -> list[tuple[int, int, int, int]]:
        """The units of one row, left to right, without the row number."""
        if "rows" not in self._cache:
            by_row: list[list[tuple[int, int, int, int]]] = [[] for _ in range(self.rows)]
            for r, *cols in sorted(self.units):
                by_row[r].append(tuple(cols))
            self._cache["rows"] = by_row
        return self._cache["rows"][row]

    def bands(self) -> list[tuple[int, int, int, torch.Tensor]]:
        """The banded backend's calls: ``(q_start, q_end, k_start, mask)`` per query block.

        A block of queries ``[a, b)`` can see no key at or after ``b`` (causal) and none
        before the start of the unit that holds column ``a`` in its row (units never see
        each other); the earliest such start over the rows bounds the keys of the block.
        The mask is the dense mask's ``[a:b, k_start:b]`` block (built once per batch,
        shared by every layer).
        """
        if "bands" not in self._cache:
            from rayreward.data.packing import packed_attention_mask

            seq, t = self.sequence_ids, self.length
            mask = packed_attention_mask(seq, self.branch_ids)
            cols = torch.arange(t, device=seq.device).expand_as(seq)
            new_run = torch.ones_like(seq, dtype=torch.bool)
            new_run[:, 1:] = seq[:, 1:] != seq[:, :-1]
            run_start = torch.where(new_run, cols, torch.zeros_like(cols)).cummax(dim=1).values
            n = max(1, round(t / BAND))
            edges = [round(i * t / n) for i in range(n + 1)]
            starts = run_start[:, edges[:-1]].min(dim=0).values.tolist()
            self._cache["bands"] = [(a, b, k, mask[:, :, a:b, k:b].contiguous())
                                    for a, b, k in zip(edges, edges[1:], starts)]
        return self._cache["bands"]

    def varlen_spans(self):
        """Flat token indices and cumulative lengths of the two span kinds (on device)."""
        if "varlen" not in self._cache:
            pc_q, pc_cu, r_q, r_k, r_cu_q, r_cu_k = [], [0], [], [], [0], [0]
            for row, start, prefix_end, chosen_end, end in self.units:
                base = row * self.length
                pc_q.extend(range(base + start, base + chosen_end))
                pc_cu.append(len(pc_q))
                r_q.extend(range(base + chosen_end, base + end))
                r_k.extend(range(base + start, base + prefix_end))
                r_k.extend(range(base + chosen_end, base + end))
                r_cu_q.append(len(r_q))
                r_cu_k.append(len(r_k))
            as_index = functools.partial(torch.tensor, dtype=torch.long, device=self.device)
            as_cu = functools.partial(torch.tensor, dtype=torch.int32, device=self.device)
            widths = lambda cu: max(b - a for a, b in zip(cu, cu[1:]))  # noqa: E731
            self._cache["varlen"] = (
                (as_index(pc_q), as_cu(pc_cu), widths(pc_cu)),
                (as_index(r_q), as_index(r_k), as_cu(r_cu_q), as_cu(r_cu_k), widths(r_cu_q), widths(r_cu_k)),
            )
        return self._cache["varlen"]


def build_layout(batch: dict[str, torch.Tensor], backend: str) -> PackedLayout:
    """The ``PackedLayout`` of a packed batch for one (resolved) backend.

    ``ANY_UNIT`` backends read only the sequence and branch ids, so they take ranked
    groups (``pack_groups``) as well as pairs; the others need the pairs' ``packed_units``.
    """
    seq = batch["packed_sequence_ids"]
    units = [tuple(u) for u in batch["packed_units"].tolist()] if "packed_units" in batch else []
    return PackedLayout(units=units, rows=seq.shape[0], length=seq.shape[1], backend=backend, device=seq.device,
                        sequence_ids=seq, branch_ids=batch["packed_branch_ids"])


def resolve_backend(
    model: nn.Module, requested: str = "auto", device: torch.device | None = None, half: bool = True,
) -> str:
    """The backend a packed forward of ``model`` uses (``requested`` unless ``auto``).

    ``auto`` gives ``varlen`` on CUDA in bf16/fp16 (flash attention has no fp32),
    ``segment`` on other accelerators, ``banded`` on CPU, and ``dense`` for models whose
    attention is not sdpa (eager attention, or a model that cannot change its attention
    function). On CPU, measured side by side (benchmarks/RESULTS.md, "CPU attention
    backends"), skipping the masked blocks per pair did not pay for its many small
    kernel calls (within 2% at 1 thread, 4-9% slower at 2); the bands skip most of the
    same blocks in a few calls per layer.

    Args:
        model: the unwrapped model.
        requested: a name of ``BACKENDS``.
        device: where the batch is.
        half: whether attention runs in bf16/fp16 (half weights or autocast).

    Raises:
        ValueError: an unknown backend, or one the model or device cannot run.
    """
    if requested not in BACKENDS:
        raise ValueError(f"attention_backend: got {requested!r}; expected one of {', '.join(BACKENDS)}")
    problem = backend_problem(model, requested, device, half)
    if requested != "auto":
        if problem:
            raise ValueError(f"attention_backend={requested!r}: {problem}")
        return requested
    if backend_problem(model, "segment", device):
        return "dense"
    if not backend_problem(model, "varlen", device, half):
        return "varlen"
    if device is None or device.type == "cpu":
        return "banded"
    return "segment"


def backend_problem(
    model: nn.Module, backend: str, device: torch.device | None = None, half: bool = True,
) -> str | None:
    """Why ``model`` cannot run ``backend`` on ``device``, or None when it can."""
    if backend in ("auto", "dense"):
        return None
    impl = loaded_attention(model)
    if impl not in ("sdpa", WRAPPED):
        return f"{type(model).__name__} uses attn_implementation={impl!r}; load it with 'sdpa' for this backend"
    if not takes_attention_interface(model):
        return f"{type(model).__name__} does not take its attention function from transformers' AttentionInterface"
    on_cuda = device is not None and device.type == "cuda"
    if backend == "varlen" and (not on_cuda or _varlen_attn() is None):
        return "varlen attention needs a CUDA device and torch.nn.attention.varlen (torch >= 2.10)"
    if backend == "varlen" and not half:
        return "varlen (flash) attention runs in bf16/fp16: train with bf16=True or load the model in bf16"
    if backend == "flex" and not _has_flex():
        return "this torch has no torch.nn.attention.flex_attention"
    return None


def install(model: nn.Module) -> None:
    """Gives ``model`` the ``rayreward_sdpa`` attention (idempotent, public API only)."""
    _register()
    if loaded_attention(model) != WRAPPED:
        model.set_attn_implementation(WRAPPED)


def layout_kwargs(layout: PackedLayout) -> dict[str, Any]:
    """Keyword arguments of the model call that route attention to ``layout``'s backend.

    The ``attention_mask`` is a 4D placeholder (an expanded scalar, no memory) so that
    transformers' mask builder passes it through instead of deriving a dense mask from
    the position ids; the backend never reads it.
    """
    placeholder = torch.ones((), dtype=torch.bool, device=layout.device).expand(layout.rows, 1, layout.length, layout.length)
    return {"attention_mask": placeholder, LAYOUT_KEY: layout}


# -- the attention function ------------------------------------------------------------


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """``AttentionInterface`` function: a packed backend when given a layout, sdpa otherwise.

    Shapes as transformers passes them: ``query`` ``(rows, heads, T, dim)``, ``key`` and
    ``value`` ``(rows, kv_heads, T, dim)``; returns ``((rows, T, heads, dim), None)``.
    """
    layout = kwargs.pop(LAYOUT_KEY, None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    dropout = dropout if module.training else 0.0
    run = {"segment": _segment, "varlen": _varlen, "flex": _flex, "banded": _banded}[layout.backend]
    return run(layout, query, key, value, scaling, dropout), None


def _segment(layout: PackedLayout, q, k, v, scale, dropout):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = q.shape[1] != k.shape[1]
    heads, dim = q.shape[1], v.shape[-1]
    out_rows = []
    # unbind/split rather than indexing: their backward is one stack/cat, where every
    # slice's backward would fill a zero tensor of the whole batch.
    for row, (qr, kr, vr) in enumerate(zip(q.unbind(0), k.unbind(0), v.unbind(0))):
        units, sizes, col = layout.row_units(row), [], 0
        for start, prefix_end, chosen_end, end in units:
            sizes += [start - col, prefix_end - start, chosen_end - prefix_end, end - chosen_end]
            col = end
        sizes.append(layout.length - col)
        qs, ks, vs = (t.split(sizes, dim=1) for t in (qr, kr, vr))
        pieces = []
        for u, (start, prefix_end, chosen_end, end) in enumerate(units):
            if sizes[4 * u]:
                pieces.append(qr.new_zeros(heads, sizes[4 * u], dim))
            # prefix + chosen: plain causal attention over a contiguous span (no mask: the
            # flash kernel, which skips the upper triangle)
            pc = [torch.cat([t[4 * u + 1], t[4 * u + 2]], dim=1) for t in (qs, ks, vs)]
            pieces.append(sdpa(*pc, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa))
            # rejected: sees the whole prefix and itself causally (lower-right aligned)
            n_prefix, n_rej = sizes[4 * u + 1], sizes[4 * u + 3]
            keys = torch.cat([ks[4 * u + 1], ks[4 * u + 3]], dim=1)
            values = torch.cat([vs[4 * u + 1], vs[4 * u + 3]], dim=1)
            mask = torch.ones(n_rej, n_prefix + n_rej, dtype=torch.bool, device=q.device).tril(n_prefix)
            pieces.append(sdpa(qs[4 * u + 3], keys, values, attn_mask=mask, dropout_p=dropout, scale=scale,
                               enable_gqa=gqa))
        if sizes[-1]:
            pieces.append(qr.new_zeros(heads, sizes[-1], dim))
        out_rows.append(torch.cat(pieces, dim=1))
    return torch.stack(out_rows).transpose(1, 2).contiguous()


def _banded(layout: PackedLayout, q, k, v, scale, dropout):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    bands = layout.bands()
    gqa = q.shape[1] != k.shape[1]
    # split rather than indexing the queries: its backward is one cat. The key and value
    # slices overlap from band to band, so each backward adds into its own slice.
    blocks = q.split([b - a for a, b, _, _ in bands], dim=2)
    out = [sdpa(qb, k[:, :, s:b], v[:, :, s:b], attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)
           for qb, (a, b, s, mask) in zip(blocks, bands)]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous()


def _flex(layout: PackedLayout, q, k, v, scale, dropout):
    if dropout:
        raise ValueError("the flex backend runs without attention dropout; set disable_dropout=True")
    out = _flex_fn(q.device.type)(q, k, v, block_mask=layout.block_mask(), scale=scale,
                                  enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2).contiguous()


def _varlen(layout: PackedLayout, q, k, v, scale, dropout):
    if dropout:
        raise ValueError("the varlen backend runs without attention dropout; set disable_dropout=True")
    attn = _varlen_attn()
    rows, heads, length, dim = q.shape
    # (rows, heads, T, dim) -> one flat token axis, as varlen attention takes it
    flat = [t.transpose(1, 2).reshape(rows * length, t.shape[1], t.shape[-1]) for t in (q, k, v)]
    (pc, pc_cu, pc_max), (rq, rk, rq_cu, rk_cu, rq_max, rk_max) = layout.varlen_spans()
    gqa = q.shape[1] != k.shape[1]
    out_pc = attn(flat[0][pc], flat[1][pc], flat[2][pc], pc_cu, pc_cu, pc_max, pc_max, scale, gqa)
    out_r = attn(flat[0][rq], flat[1][rk], flat[2][rk], rq_cu, rk_cu, rq_max, rk_max, scale, gqa)
    out = flat[0].new_zeros(rows * length, heads, v.shape[-1])
    out = out.index_put((pc,), out_pc).index_put((rq,), out_r)
    return out.view(rows, length, heads, v.shape[-1])


# -- torch feature probes --------------------------------------------------------------


@functools.cache
def _varlen_attn():
    """A causal varlen call ``f(q, k, v, cu_q, cu_k, max_q, max_k, scale, gqa)``, or None.

    Causal with unequal query and key lengths is aligned bottom-right (flash attention's
    convention), which is what the rejected span against prefix + rejected needs. torch
    2.10/2.11 spell causality ``is_causal=True``; later releases ``window_size=(-1, 0)``.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    takes_gqa = "enable_gqa" in params

    def call(q, k, v, cu_q, cu_k, max_q, max_k, scale, gqa):
        if gqa and not takes_gqa:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        extra = {"enable_gqa": gqa} if takes_gqa else {}
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, **causal, **extra)

    return call


def _has_flex() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _flex_fn(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    # On CUDA flex attention is fast only compiled; on CPU its eager form is the exact
    # reference (forward only in torch 2.13) and compiling would cost more than it saves.
    # Packed rows change length from batch to batch: dynamic shapes after the first
    # recompilation, not one graph per length.
    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(WRAPPED, packed_attention)
    # Unpacked calls (evaluation, padded batches) get the masks sdpa would get.
    AttentionMaskInterface.register(WRAPPED, sdpa_mask)


__all__ = ["ANY_UNIT", "BACKENDS", "PackedLayout", "backend_problem", "build_layout", "install", "resolve_backend"]
