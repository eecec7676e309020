"""Grouped-query self-attention with rotary embeddings, and the metadata of a paged (engine) forward.

Two entry points share the projections:
- `Attention.forward(x (B, T, H))`: full causal sequences (training, scoring) through `kernels.flash_attention`;
- `Attention.forward_paged(x (N, H), meta, k_cache, v_cache)`: a flattened batch of several sequences, the new
  tokens' K/V written into a paged cache with `kernels.write_kv`, then prefill chunks attend with
  `kernels.flash_attention_varlen` (no cached prefix) or `kernels.paged_prefill_attention` (a cached prefix:
  prefix-cache hits, chunked prefill), and decode tokens with `kernels.paged_attention`.

The kernels dispatch picks Triton or the torch reference by device; no device branches here.

Flattened batch layout (vLLM v1 style): the prefill sequences come first, then the decode sequences (one new
token each). Sequence i owns tokens query_start_loc[i]:query_start_loc[i+1] and its K/V live in the blocks
block_tables[i]; seq_lens[i] counts its cached tokens after this step (prefix + new tokens).

Short chunks as decode rows: the tokens of a chunk of at most DECODE_ROWS_MAX_QUERY tokens (a speculative
verification: the last token and its drafts; a short prompt), up to DECODE_ROWS_MAX_TOKENS in a step, are attended
one row each through the decode kernel, row t of a chunk after c cached tokens seeing c + t + 1 keys. The CPU
decode path computes a row the same way whatever else is in its batch (checked at head dims 64 and 128; at 16 the
padding to a batch's longest row can move an ulp), so a verified draft token gets bit for bit the attention it
would have had as a decode token. In bf16 the prefill kernels' other summation order moved near-tie argmaxes, and
greedy output with speculation drifted from greedy output without it (3 answers of 16 on the bundled model,
bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import kernels
from llm.config import ModelConfig
from llm.norm import RMSNorm

DECODE_ROWS_MAX_QUERY = 16  # chunks up to this many tokens run as decode rows (module docstring)
# ... as long as a step has at most this many such tokens: each row gathers its sequence's keys again (on the CPU a
# step verifying 32 sequences' drafts took 66 ms a layer as rows, 11 ms as chunks), and at that batch size bf16
# output already depends on what shares the batch, speculation or not.
DECODE_ROWS_MAX_TOKENS = 64


@dataclass
class AttentionMetadata:
    """Everything a paged forward needs besides the token ids; built once per step, shared by all layers."""

    positions: torch.Tensor  # (N,) int64, position of each token in its sequence (RoPE)
    slot_mapping: torch.Tensor  # (N,) int64, cache slot = block_id * block_size + offset of each token (-1 = skip)
    query_start_loc: torch.Tensor  # (B + 1,) int32, cu_seqlens of the new tokens per sequence
    seq_lens: torch.Tensor  # (B,) int32, tokens in the cache per sequence after this step (context + new)
    block_tables: torch.Tensor  # (B, max_blocks) int32, block ids per sequence, padded with 0
    num_prefills: int  # sequences 0..num_prefills-1 are prefill chunks, the rest decode one token each
    num_prefill_tokens: int  # = query_start_loc[num_prefills]
    max_query_len: int  # longest prefill chunk (1 if decode only)
    max_seq_len: int  # longest seq_lens entry
    prefill_has_context: bool  # some prefill chunk has cached tokens before it (needs the paged prefill kernel)
    # Short chunks as decode rows (module docstring), None when the step has none: which prefill tokens (R,) int64,
    # and per row the keys it sees (R,) int32 and its sequence's block table (R, max_blocks) int32.
    row_index: torch.Tensor | None = None
    row_seq_lens: torch.Tensor | None = None
    row_block_tables: torch.Tensor | None = None
    # RoPE cos/sin of `positions`, filled by the first layer and reused by the others (same positions every layer)
    rope_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def num_decode_tokens(self) -> int:
        return self.positions.shape[0] - self.num_prefill_tokens

    def last_token_indices(self) -> torch.Tensor:
        """(B,) int64 index of each sequence's last new token in the flattened batch: where to sample."""
        return self.query_start_loc[1:].long() - 1

    def to(self, device: torch.device | str) -> AttentionMetadata:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return AttentionMetadata(
            positions=move(self.positions),
            slot_mapping=move(self.slot_mapping),
            query_start_loc=move(self.query_start_loc),
            seq_lens=move(self.seq_lens),
            block_tables=move(self.block_tables),
            num_prefills=self.num_prefills,
            num_prefill_tokens=self.num_prefill_tokens,
            max_query_len=self.max_query_len,
            max_seq_len=self.max_seq_len,
            prefill_has_context=self.prefill_has_context,
            row_index=None if self.row_index is None else move(self.row_index),
            row_seq_lens=None if self.row_seq_lens is None else move(self.row_seq_lens),
            row_block_tables=None if self.row_block_tables is None else move(self.row_block_tables),
        )

    @property
    def prefills_all_rows(self) -> bool:
        """Every prefill token is a decode row: the prefill kernels have nothing to do this step."""
        return self.row_index is not None and self.row_index.shape[0] == self.num_prefill_tokens


def build_attention_metadata(
    context_lens: Sequence[int],
    query_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    num_prefills: int | None = None,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for a flattened batch, from per-sequence Python lists (what the scheduler has).

    context_lens[i]: tokens of sequence i already in the cache; query_lens[i]: new tokens this step; block_tables[i]:
    its block ids, covering context_lens[i] + query_lens[i] tokens. Prefills (query_len > 1, or any sequence before
    index num_prefills when given) must come before decodes; a decode is one new token after a cached context.
    """
    B = len(query_lens)
    if not (len(context_lens) == len(block_tables) == B):
        raise ValueError("context_lens, query_lens and block_tables need one entry per sequence")
    if num_prefills is None:
        num_prefills = sum(1 for q in query_lens if q > 1)
    for i, (c, q, bt) in enumerate(zip(context_lens, query_lens, block_tables)):
        if q < 1:
            raise ValueError(f"sequence {i} has query_len {q}; every scheduled sequence needs >= 1 new token")
        if i >= num_prefills and q != 1:
            raise ValueError(f"sequence {i} (query_len {q}) comes after the decodes; put prefill chunks first")
        if len(bt) * block_size < c + q:
            raise ValueError(f"sequence {i}: {len(bt)} blocks of {block_size} cannot hold {c + q} tokens")
    positions: list[int] = []
    slots: list[int] = []
    for c, q, bt in zip(context_lens, query_lens, block_tables):
        for p in range(c, c + q):
            positions.append(p)
            slots.append(bt[p // block_size] * block_size + p % block_size)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    width = max(max((len(bt) for bt in block_tables), default=0), 1)
    # Padded in Python and converted once: a tensor per row costs two small ops per sequence every step.
    table = torch.tensor([list(bt) + [0] * (width - len(bt)) for bt in block_tables], dtype=torch.int32)
    table = table.view(B, width)  # (B, width) also when B == 0
    rows = [
        (starts[i] + t, c + t + 1, i)  # (token, keys it sees, its sequence)
        for i, (c, q) in enumerate(zip(context_lens[:num_prefills], query_lens[:num_prefills]))
        if q <= DECODE_ROWS_MAX_QUERY
        for t in range(q)
    ]
    row_fields = {}
    if rows and len(rows) <= DECODE_ROWS_MAX_TOKENS:
        index, lens, seqs = zip(*rows)
        row_fields = dict(
            row_index=torch.tensor(index, dtype=torch.int64, device=device),
            row_seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
            row_block_tables=table.index_select(0, torch.tensor(seqs)).to(device),
        )
    return AttentionMetadata(
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=table.to(device),
        num_prefills=num_prefills,
        num_prefill_tokens=starts[num_prefills],
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        prefill_has_context=any(c > 0 for c in context_lens[:num_prefills]),
        **row_fields,
    )


class RotaryEmbedding(nn.Module):
    """RoPE in the Llama/Mixtral (rotate-half, non-interleaved) layout that Hugging Face checkpoints use, with the
    frequency scalings "linear" and "llama3" (Llama 3.1+: low frequencies slowed by `factor`, a smooth ramp between
    low_freq_factor and high_freq_factor wavelengths of the original context)."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scaling = dict(scaling) if scaling else None
        # Hashable identity of the frequencies: the per-step cache key (every layer of a model shares them).
        self.key = (head_dim, theta, tuple(sorted(self.scaling.items())) if self.scaling else None)

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """(D/2,) float32 angular frequencies, as transformers computes them for this rope type."""
        D = self.head_dim
        inv = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D)).to(device)
        s = self.scaling
        if s is None:
            return inv
        if s["rope_type"] == "linear":
            return inv / s["factor"]
        assert s["rope_type"] == "llama3", s
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)  # long wavelengths: slowed by factor
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...) int -> cos, sin (..., head_dim) in dtype. Computed on the fly: D/2 pows, no buffers
        to re-create after a meta-device load, exact for any position."""
        freqs = positions.float()[..., None] * self.inv_freq(positions.device)  # (..., D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., heads, D); cos/sin (..., D) broadcast over heads."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """GQA self-attention. The families' differences are configuration: a bias on Q/K/V (and O), RMSNorm on q and k
    per head (Qwen3) or over the whole projection (OLMoE), clip_qkv (OLMoE), head_dim != hidden / heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        h, q_width, kv_width = (
            config.hidden_size,
            config.num_heads * config.head_dim,
            config.num_kv_heads * config.head_dim,
        )
        self.q_proj = nn.Linear(h, q_width, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, kv_width, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, kv_width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_width, h, bias=config.o_bias)
        self.qk_norm = config.qk_norm
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_norm == "head":
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        elif config.qk_norm == "proj":
            self.q_norm = RMSNorm(q_width, config.rms_norm_eps)
            self.k_norm = RMSNorm(kv_width, config.rms_norm_eps)
        self.clip_qkv = config.clip_qkv
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def _qkv(
        self, x: torch.Tensor, positions: torch.Tensor, rope_cache: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., hidden), positions (...) -> q (..., H, D), k/v (..., Hkv, D), RoPE applied to q and k.
        rope_cache (AttentionMetadata.rope_cache): cos/sin shared by every layer of one engine step."""
        lead = x.shape[:-1]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "proj":  # OLMoE: over the whole projection, before the heads split
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            c = self.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        q = q.view(*lead, self.num_heads, self.head_dim)
        k = k.view(*lead, self.num_kv_heads, self.head_dim)
        v = v.view(*lead, self.num_kv_heads, self.head_dim)
        if self.qk_norm == "head":  # Qwen3: each head's D, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        if rope_cache is None:
            cos, sin = self.rotary.cos_sin(positions, x.dtype)
        else:
            key = (self.rotary.key, x.dtype)
            if key not in rope_cache:
                rope_cache[key] = self.rotary.cos_sin(positions, x.dtype)
            cos, sin = rope_cache[key]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, hidden), positions (T,) or (B, T) -> (B, T, hidden); causal over the T tokens."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, positions)
        o = kernels.flash_attention(q, k, v, causal=True, softmax_scale=self.scale)  # (B, T, H, D)
        return self.o_proj(o.reshape(B, T, -1))

    def forward_paged(
        self, x: torch.Tensor, meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """x (N, hidden) flattened new tokens; k_cache/v_cache (num_blocks, block_size, Hkv, D) of this layer,
        updated in place -> (N, hidden)."""
        q, k, v = self._qkv(x, meta.positions, meta.rope_cache)  # (N, H, D), (N, Hkv, D)
        kernels.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        P, p = meta.num_prefill_tokens, meta.num_prefills
        parts = []
        if meta.prefills_all_rows:
            parts.append(self._rows(q[:P], meta, k_cache, v_cache))
        elif p > 0:
            cu = meta.query_start_loc[: p + 1]
            if meta.prefill_has_context:
                parts.append(
                    kernels.paged_prefill_attention(
                        q[:P],
                        k_cache,
                        v_cache,
                        meta.block_tables[:p],
                        meta.seq_lens[:p],
                        cu,
                        max_seqlen_q=meta.max_query_len,
                        causal=True,
                        softmax_scale=self.scale,
                    )
                )
            else:  # fresh prompts: their keys are exactly the new tokens, no cache read needed
                parts.append(
                    kernels.flash_attention_varlen(
                        q[:P],
                        k[:P],
                        v[:P],
                        cu,
                        cu,
                        meta.max_query_len,
                        meta.max_query_len,
                        causal=True,
                        softmax_scale=self.scale,
                    )
                )
        if P < q.shape[0]:
            parts.append(
                kernels.paged_attention(
                    q[P:],
                    k_cache,
                    v_cache,
                    meta.block_tables[p:],
                    meta.seq_lens[p:],
                    softmax_scale=self.scale,
                )
            )
        o = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # (N, H, D)
        if meta.row_index is not None and not meta.prefills_all_rows:  # short chunks beside long ones: overwrite
            o.index_copy_(0, meta.row_index, self._rows(q.index_select(0, meta.row_index), meta, k_cache, v_cache))
        return self.o_proj(o.reshape(o.shape[0], -1))

    def _rows(
        self, q: torch.Tensor, meta: AttentionMetadata, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> torch.Tensor:
        """q (R, H, D) of the short chunks' tokens, each attended as a decode row -> (R, H, D)."""
        return kernels.paged_attention(
            q, k_cache, v_cache, meta.row_block_tables, meta.row_seq_lens, softmax_scale=self.scale
        )
