"""Speculative decoding around the engine step: drafts before the schedule, verification after the forward.

    propose   for each running sequence that decodes (below the batch size threshold): an n-gram draft of up to
              k tokens (llm/speculative_ngram.py); under a quote constraint (llm/grounding.py) the tokens it forces
              (the rest of a quoted clause, a citation marker) and, where it leaves a choice, the n-gram guess if
              it is allowed (`draft`: forced tokens are always accepted); the scheduler runs [last token, d1..dk] as one multi-token chunk
              through the paged prefill path, so one forward gives the target logits at all k+1 positions
    rows      k+1 sampling rows per drafted sequence (`DraftRow`): row i sees the output extended by d1..di, so
              penalties and min_tokens act exactly as in k+1 separate decode steps
    verify    the sampler draws x_i from row i's distribution p_i; d_i is accepted while x_i == d_i, the first
              x_i != d_i (or x_{k+1} after k acceptances, the bonus token) ends the step
    rollback  the engine then sets num_computed_tokens back to the accepted length and frees the blocks that only
              rejected tokens occupied (KVCacheManager.trim)

Why this is Leviathan et al.'s rejection sampling: an n-gram draft is deterministic, a one-hot q = 1[t]. The rule
"accept t with probability min(1, p(t)/q(t)) = p(t), else draw from norm(max(0, p - q)) = p without t" gives t with
probability p(t) and any other x with probability p(x): the same as drawing x ~ p and accepting when x == t, which
is what verify does. Each emitted token is therefore drawn from the target model's distribution given the tokens
before it, exactly as without speculation; under greedy decoding the output is the same token for token. Seeded
requests even draw the same noise (`rewind_generators`): a seed gives the same text with or without speculation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from llm.request import Sequence
from llm.sampler import SamplingParams
from llm.speculative_config import SpeculativeConfig
from llm.speculative_ngram import NgramProposer


class DraftRow:
    """Sampling row i of a drafted sequence: the sequence as it would be after accepting draft[:i] (what the
    sampler and OutputProcessor.banned_ids / unpack read)."""

    def __init__(self, seq: Sequence, extra: list[int]):
        self.seq = seq
        self.params: SamplingParams = seq.params
        self.prompt_token_ids = seq.prompt_token_ids
        self.output_token_ids = seq.output_token_ids + extra
        self.num_output_tokens = len(self.output_token_ids)
        self.generator = seq.generator

    def __getattr__(self, name: str):  # anything else (group, request_id, ...) is the sequence's own
        return getattr(self.seq, name)


@dataclass
class SpecDecodeStats:
    """Counters over the engine's life (vLLM's spec_decode metrics)."""

    num_spec_steps: int = 0  # engine steps that verified at least one draft
    num_drafts: int = 0  # (sequence, step) pairs verified
    num_draft_tokens: int = 0  # tokens proposed
    num_accepted_tokens: int = 0  # of those, accepted

    def as_dict(self) -> dict[str, float]:
        d, t, a = self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens
        return {
            "spec_num_steps": self.num_spec_steps,
            "spec_num_drafts": d,
            "spec_num_draft_tokens": t,
            "spec_num_accepted_tokens": a,
            "spec_acceptance_rate": a / t if t else 0.0,
            # tokens emitted per verified sequence step, the bonus / correction token included (vLLM's "mean
            # acceptance length"); 1.0 = no gain
            "spec_mean_acceptance_length": (a + d) / d if d else 0.0,
        }


class SpeculativeDecoder:
    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
        self.stats = SpecDecodeStats()

    def propose(self, running: list[Sequence]) -> dict[str, list[int]]:
        """Drafts by request id for the running sequences that decode this step. Above the batch threshold only
        the tokens a quote constraint forces: they are always accepted, so verifying them never wastes work."""
        if not running:
            return {}
        guess = len(running) <= self.config.disable_by_batch_size
        drafts = {}
        for seq in running:
            if seq.num_tokens - seq.num_computed_tokens != 1 or not seq.group.forked:
                continue  # a prefill chunk, or a prompt whose n > 1 samples are not forked yet
            if not guess and seq.constraint is None:
                continue
            # k drafts emit up to k+1 tokens: stay within max_tokens and the window.
            room = min(seq.group.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
            k = min(self.config.num_speculative_tokens, room)
            draft = self.draft(seq, k, guess) if k > 0 else []
            if draft:
                drafts[seq.request_id] = draft
        return drafts

    def draft(self, seq: Sequence, k: int, guess: bool = True) -> list[int]:
        """Up to k draft tokens: the n-gram proposal, or under a quote constraint the tokens it forces and,
        where it leaves a choice, the n-gram guess while the constraint allows it (guess=False: forced only)."""
        c = seq.constraint
        if c is None:
            return self.proposer.propose(seq.all_token_ids, k) if guess else []
        c, tokens, draft = c.copy(), list(seq.all_token_ids), []
        while len(draft) < k:
            t = c.only_next()
            if t is None:
                if not guess:
                    break
                ngram = self.proposer.propose(tokens, 1)
                if not ngram or not c.accepts(ngram[0]):
                    break
                t = ngram[0]
            draft.append(t)
            tokens.append(t)
            c.advance(t)
        return draft

    @staticmethod
    def rows(seq: Sequence, draft: list[int]) -> list[DraftRow]:
        """The len(draft)+1 sampling rows of a drafted sequence, in position order."""
        return [DraftRow(seq, draft[:i]) for i in range(len(draft) + 1)]

    def num_accepted(self, draft: list[int], sampled: list[int]) -> int:
        """Leading draft tokens equal to the target's draws (sampled has len(draft)+1 entries); counts them."""
        n = 0
        while n < len(draft) and sampled[n] == draft[n]:
            n += 1
        self.stats.num_drafts += 1
        self.stats.num_draft_tokens += len(draft)
        self.stats.num_accepted_tokens += n
        return n


def save_generators(seqs: Iterable[Sequence]) -> dict[str, torch.Tensor]:
    """Generator states of the seeded sampling sequences among seqs, before their k+1 rows draw noise."""
    return {s.request_id: s.generator.get_state() for s in seqs if s.generator is not None and not s.params.greedy}


def rewind_generators(saved: dict[str, torch.Tensor], seq: Sequence, num_emitted: int, vocab_size: int) -> None:
    """Put a seeded sequence's generator where num_emitted decode steps would have left it: back to the saved state,
    then the same num_emitted (V,) noise draws the sampler made for its first rows (sampler.random_sample)."""
    state = saved.get(seq.request_id)
    if state is None:
        return
    g = seq.generator
    assert g is not None
    g.set_state(state)
    noise = torch.empty(vocab_size, dtype=torch.float32, device=g.device)
    for _ in range(num_emitted):
        noise.exponential_(generator=g)
