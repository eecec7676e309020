"""Paged-forward metadata built from scheduler lists, and rotary embeddings."""

from __future__ import annotations

import pytest
import torch

from llm.attention import RotaryEmbedding, apply_rotary, build_attention_metadata


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
