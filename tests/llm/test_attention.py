"""Paged-forward metadata built from scheduler lists, and rotary embeddings."""

from __future__ import annotations

import pytest
import torch

from llm.attention import (
    DECODE_ROWS_MAX_QUERY,
    DECODE_ROWS_MAX_TOKENS,
    RotaryEmbedding,
    apply_rotary,
    build_attention_metadata,
)


def test_metadata_for_mixed_batch():
    # seq 0: fresh prompt of 3; seq 1: chunk of 2 after 5 cached; seq 2: decode after 6 cached
    meta = build_attention_metadata([0, 5, 6], [3, 2, 1], [[4], [2, 0], [7, 1]], block_size=4)
    assert meta.positions.tolist() == [0, 1, 2, 5, 6, 6]
    assert meta.slot_mapping.tolist() == [16, 17, 18, 1, 2, 6]  # block 0 offsets 1, 2; block 1 offset 2
    assert meta.query_start_loc.tolist() == [0, 3, 5, 6] and meta.query_start_loc.dtype == torch.int32
    assert meta.seq_lens.tolist() == [3, 7, 7] and meta.seq_lens.dtype == torch.int32
    assert meta.block_tables.tolist() == [[4, 0], [2, 0], [7, 1]]
    assert (meta.num_prefills, meta.num_prefill_tokens, meta.num_decode_tokens) == (2, 5, 1)
    assert (meta.max_query_len, meta.max_seq_len, meta.prefill_has_context) == (3, 7, True)
    assert meta.last_token_indices().tolist() == [2, 4, 5]
    fresh = build_attention_metadata([0, 0], [2, 4], [[1], [0]], block_size=4)
    assert fresh.prefill_has_context is False and fresh.num_decode_tokens == 0


def test_metadata_rejects_bad_batches():
    with pytest.raises(ValueError, match="prefill chunks first"):
        build_attention_metadata([4, 0], [1, 3], [[0, 1], [2]], block_size=4)
    with pytest.raises(ValueError, match="cannot hold"):
        build_attention_metadata([0], [5], [[0]], block_size=4)
    with pytest.raises(ValueError, match="new token"):
        build_attention_metadata([3], [0], [[0]], block_size=4)


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, theta=10000.0)
    q, k = torch.randn(1, 16, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cm, sm = rope.cos_sin(torch.tensor([m]), torch.float64)
        cn, sn = rope.cos_sin(torch.tensor([n]), torch.float64)
        return (apply_rotary(q[None], cm, sm) * apply_rotary(k[None], cn, sn)).sum().item()

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-5)  # angles are fp32, as in transformers
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)
    c, s = rope.cos_sin(torch.tensor([0]), torch.float64)  # position 0 is the identity
    torch.testing.assert_close(apply_rotary(q[None], c, s), q[None])


def test_paged_forward_computes_rope_once_per_step(monkeypatch):
    # cos/sin depend only on the step's positions: the first layer fills meta.rope_cache, the others reuse it,
    # and the result is the same as computing it in every layer.
    from llm.config import get_config
    from llm.kv_cache import allocate_kv_caches
    from llm.model import CausalLM

    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (6,))
    calls = []
    orig = RotaryEmbedding.cos_sin
    monkeypatch.setattr(RotaryEmbedding, "cos_sin", lambda self, *a: calls.append(1) or orig(self, *a))
    outs = []
    for cache_rope in (True, False):
        caches = allocate_kv_caches(cfg.num_layers, 4, 4, cfg.num_kv_heads, cfg.head_dim)
        meta = build_attention_metadata([0, 0], [4, 2], [[1, 0], [2]], 4)
        if not cache_rope:
            meta.rope_cache = None  # the unshared path: each layer computes its own
        calls.clear()
        with torch.no_grad():
            outs.append(model.forward_paged(ids, meta, caches))
        assert len(calls) == (1 if cache_rope else cfg.num_layers)
    assert torch.equal(outs[0], outs[1])


def test_metadata_marks_short_chunks_as_decode_rows():
    # seq 0: a fresh prompt longer than DECODE_ROWS_MAX_QUERY; seq 1: 3 tokens after 5 cached (a verification);
    # seq 2: a decode. Only seq 1's tokens are rows, each seeing its own prefix.
    long = DECODE_ROWS_MAX_QUERY + 1
    meta = build_attention_metadata([0, 5, 6], [long, 3, 1], [[0, 1, 2, 3, 4], [5, 6], [7, 8]], block_size=4)
    assert meta.row_index.tolist() == [long, long + 1, long + 2]
    assert meta.row_seq_lens.tolist() == [6, 7, 8]
    assert meta.row_block_tables.tolist() == [[5, 6, 0, 0, 0]] * 3
    assert not meta.prefills_all_rows
    short = build_attention_metadata([0, 5], [2, 3], [[1], [5, 6]], block_size=4)
    assert short.prefills_all_rows and short.row_seq_lens.tolist() == [1, 2, 6, 7, 8]
    assert build_attention_metadata([3, 6], [1, 1], [[0], [7, 8]], block_size=4).row_index is None  # decodes only
    n = DECODE_ROWS_MAX_TOKENS // 4 + 1  # drafts of 4 in every sequence, one row too many: chunks as before
    many = build_attention_metadata([8] * n, [4] * n, [[i, n + i, 2 * n + i] for i in range(n)], block_size=4)
    assert many.row_index is None and many.num_prefill_tokens == 4 * n


@pytest.mark.parametrize("beside_a_long_prompt", [False, True])
def test_verified_tokens_attend_bit_for_bit_as_decoded_ones_in_bf16(beside_a_long_prompt):
    # Greedy speculation is exact only if a verified draft token's attention is what it would have been as a decode
    # token. In bf16 the prefill kernels' summation order differs by an ulp here and there, enough to move a near
    # tie (with these seeds and lengths it did); short chunks therefore run through the decode kernel, one row per
    # token (llm/attention.py). The projections are made exact (weights in {-1/8, 0, 1/8}, inputs in {-1, 0, 1},
    # o_proj the identity) so that only attention can differ, whatever GEMM order the CPU's bf16 matmuls take.
    from llm.attention import Attention
    from llm.config import get_config
    from llm.kv_cache import allocate_kv_caches

    torch.manual_seed(0)
    cfg = get_config("tiny", hidden_size=128, num_heads=2, num_kv_heads=1, head_dim=64)  # real checkpoints' head dim
    attn = Attention(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.copy_(torch.randint(-1, 2, proj.weight.shape) / 8)
        attn.o_proj.weight.copy_(torch.eye(cfg.hidden_size))
    bs, nblk = 16, 64
    tokens = lambda n: torch.randint(-1, 2, (n, cfg.hidden_size)).to(torch.bfloat16)  # noqa: E731
    drafts, other = tokens(5), tokens(DECODE_ROWS_MAX_QUERY + 9)
    other_table = list(range(40, 42))

    def caches_with(prompt, table):
        ((k, v),) = allocate_kv_caches(1, nblk, bs, cfg.num_kv_heads, cfg.head_dim, dtype=torch.bfloat16)
        attn.forward_paged(prompt, build_attention_metadata([0], [len(prompt)], [table], bs), k, v)
        return k, v

    for n in (37, 150):
        prompt = tokens(n)
        table = list(range((n + len(drafts)) // bs + 1))

        with torch.no_grad():
            k, v = caches_with(prompt, table)
            decoded = torch.cat(
                [
                    attn.forward_paged(drafts[i : i + 1], build_attention_metadata([n + i], [1], [table], bs), k, v)
                    for i in range(len(drafts))
                ]
            )
            k, v = caches_with(prompt, table)
            if beside_a_long_prompt:  # the long prompt runs the prefill kernels in the same step
                meta = build_attention_metadata([0, n], [len(other), len(drafts)], [other_table, table], bs)
                verified = attn.forward_paged(torch.cat([other, drafts]), meta, k, v)[len(other) :]
            else:
                verified = attn.forward_paged(drafts, build_attention_metadata([n], [len(drafts)], [table], bs), k, v)
        assert verified.dtype == torch.bfloat16
        assert torch.equal(verified, decoded), n
