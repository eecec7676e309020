"""SpeculativeConfig: vLLM's keys, parsed from a dict or JSON, unknown methods and keys refused; EngineConfig and
LLM take it as `speculative_config`; the engine's stats carry the speculative counters."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgumentError
from llm.engine_config import EngineConfig
from llm.speculative_config import SpeculativeConfig
from tests.llm.helpers import PROMPTS, make_llm


def test_parse_dict_json_and_defaults():
    c = SpeculativeConfig.parse({"method": "ngram", "num_speculative_tokens": 3})
    assert c == SpeculativeConfig(num_speculative_tokens=3)
    assert SpeculativeConfig.parse('{"prompt_lookup_max": 5, "prompt_lookup_min": 5}') == SpeculativeConfig(
        prompt_lookup_max=5, prompt_lookup_min=5
    )
    assert SpeculativeConfig.parse(None) is None and SpeculativeConfig.parse(c) is c
    assert EngineConfig(speculative_config={"num_speculative_tokens": 2}).speculative_config == SpeculativeConfig(
        num_speculative_tokens=2
    )
    assert EngineConfig().speculative_config is None


@pytest.mark.parametrize(
    "value, says",
    [
        ({"method": "eagle"}, "unknown method 'eagle'"),
        ({"num_spec_tokens": 4}, "unknown key(s) ['num_spec_tokens']"),
        ({"num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min (3) must be <= prompt_lookup_max"),
        ({"disable_by_batch_size": True}, "disable_by_batch_size"),
        ("{not json", "not valid JSON"),
        ("[1]", "JSON object"),
    ],
)
def test_bad_configs_are_invalid_arguments(value, says):
    with pytest.raises(InvalidArgumentError, match=None) as err:
        EngineConfig.with_options(speculative_config=value)
    assert says in str(err.value)


def test_stats_report_acceptance(model, tok):
    off = make_llm(model, tok)
    keys = {"spec_num_steps", "spec_num_drafts", "spec_num_draft_tokens", "spec_num_accepted_tokens"}
    keys |= {"spec_acceptance_rate", "spec_mean_acceptance_length"}
    assert {k: off.engine.stats()[k] for k in keys} == dict.fromkeys(keys, 0)  # present (Prometheus gauges) at 0
    llm = make_llm(
        model, tok, speculative_config={"num_speculative_tokens": 3, "prompt_lookup_min": 1, "disable_by_batch_size": 8}
    )
    from llm import SamplingParams

    llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    s = llm.engine.stats()
    assert s["spec_num_steps"] > 0 and s["spec_num_drafts"] >= s["spec_num_steps"]
    assert s["spec_acceptance_rate"] == s["spec_num_accepted_tokens"] / s["spec_num_draft_tokens"]
    assert s["spec_mean_acceptance_length"] == 1 + s["spec_num_accepted_tokens"] / s["spec_num_drafts"]
    assert s["num_generated_tokens"] == 4 * 24
