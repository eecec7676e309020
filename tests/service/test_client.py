"""The Python client's keyword arguments: GenerationParams by name, sampling's top-k spelled sample_top_k."""

from __future__ import annotations

import pytest

from service.client import generation_params


def test_generation_params_sets_only_what_is_given():
    p = generation_params(max_tokens=8, temperature=None, stop=["\n"], sample_top_k=5)
    assert p.max_tokens == 8 and not p.HasField("temperature") and list(p.stop) == ["\n"] and p.top_k == 5


def test_a_bare_top_k_is_refused_naming_both_meanings():
    with pytest.raises(TypeError, match="num_passages=.*sample_top_k="):
        generation_params(top_k=3)
