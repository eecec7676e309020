"""Output processing: what happens to a sampled token after the sampler chose it.

    OutputProcessor.unpack   sampler tensors -> (token id, {token id: logprob} or None) per row, in Python
    OutputProcessor.append   append to the sequence: metrics, logprobs, incremental detokenisation, stop conditions
                             (eos, stop token ids, stop strings, max_tokens, the model window) -> finish reason
    OutputProcessor.delta    what a sequence produced since its previous delta (StreamDelta), holding back the few
                             characters that could still turn out to start a stop string

It also says which tokens a sequence may not sample yet (`banned_ids`: eos and stop tokens below min_tokens), since
that is the other side of the same stop rules. It holds no request state: everything lives on the Sequence.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from llm.outputs import StreamDelta
from llm.request import Sequence
from llm.sampler import SamplerOutput, SamplingParams


class OutputProcessor:
    """Stop rules and text of the engine's sequences. eos_ids: the token ids that end a sequence unless ignore_eos
    (the tokenizer's stop ids and the model's eos); max_model_len: the window no sequence may outgrow."""

    def __init__(self, eos_ids: Seq[int], max_model_len: int):
        self.eos_ids = sorted(set(eos_ids))
        self.max_model_len = max_model_len

    def stop_ids(self, params: SamplingParams) -> list[int]:
        """Token ids that would end a sequence with these params (before stop strings)."""
        return ([] if params.ignore_eos else self.eos_ids) + (params.stop_token_ids or [])

    def banned_ids(self, rows: list[Sequence]) -> list[list[int]] | None:
        """Per row the token ids it must not sample now (it is below min_tokens); None when no row is. A
        constrained row has none: allowed_ids leaves its stop ids out instead."""
        if not any(s.num_output_tokens < s.params.min_tokens and s.constraint is None for s in rows):
            return None
        return [
            self.stop_ids(s.params) if s.num_output_tokens < s.params.min_tokens and s.constraint is None else []
            for s in rows
        ]

    def allowed_ids(self, rows: list[Sequence]) -> list[list[int] | None] | None:
        """Per row the only token ids it may sample (grounded decoding: its constraint's tokens, plus its stop ids
        where the answer may end and min_tokens allows), None for a free row; None when every row is free. Never
        an empty list: below min_tokens a constraint that may only end keeps its stop ids."""
        if all(s.constraint is None for s in rows):
            return None
        out: list[list[int] | None] = []
        for s in rows:
            c = s.constraint
            if c is None:
                out.append(None)
                continue
            extra = s.output_token_ids[c.num_tokens :]  # a speculative row sees its draft as output
            ids, can_end = (c.after(extra) if extra else c).allowed()
            if can_end and (s.num_output_tokens >= s.params.min_tokens or not ids):
                ids = ids + self.stop_ids(s.params)
            out.append(ids or self.stop_ids(s.params) or list(self.eos_ids))
        return out

    @staticmethod
    def unpack(rows: list[Sequence], res: SamplerOutput) -> list[tuple[int, dict[int, float] | None]]:
        """Sampled ids and, for rows that asked for logprobs, {sampled id: logprob, top-N ids: logprob}."""
        ids = res.token_ids.tolist()
        if res.logprobs is None:
            return [(t, None) for t in ids]
        chosen = res.logprobs.tolist()
        top_lp = res.top_logprobs.tolist() if res.top_logprobs is not None else None
        top_ids = res.top_token_ids.tolist() if res.top_token_ids is not None else None
        out: list[tuple[int, dict[int, float] | None]] = []
        for i, (seq, t) in enumerate(zip(rows, ids)):
            if seq.params.logprobs is None:
                out.append((t, None))
                continue
            d = {t: chosen[i]}
            k = seq.params.logprobs
            if k and top_ids is not None and top_lp is not None:
                for tid, lp in zip(top_ids[i][:k], top_lp[i][:k]):
                    d.setdefault(tid, lp)
            out.append((t, d))
        return out

    def append(self, seq: Sequence, tok: int, logprobs: dict[int, float] | None, now: float) -> str | None:
        """Add a sampled token: metrics, logprobs, detokenization, stop conditions. Returns the finish reason
        ("stop" / "length") when this token ends the sequence (the caller then finishes it), else None."""
        group, params = seq.group, seq.params
        m = group.metrics
        if m.first_token_time is None:
            m.first_token_time = now
        if seq.index == 0 and seq.last_token_time is not None:
            m.inter_token_latencies.append(now - seq.last_token_time)
        seq.last_token_time = now
        m.num_generated_tokens += 1
        seq.append_token(tok)
        if logprobs is not None and seq.logprobs is not None:
            seq.logprobs.append(logprobs)
            seq.cumulative_logprob += logprobs[tok]
        if seq.constraint is not None and tok not in self.stop_ids(params):
            seq.constraint.advance(tok)
        n_out = seq.num_output_tokens
        past_min = n_out >= params.min_tokens
        reason: str | None = None
        if past_min and not params.ignore_eos and tok in self.eos_ids:
            reason = "stop"
        elif past_min and params.stop_token_ids and tok in params.stop_token_ids:
            reason, seq.stop_reason = "stop", tok
        if reason is None and seq.detok is not None:  # a stop token is not part of the text
            prev_len = len(seq.text)
            seq.text += seq.detok.step(tok)
            if past_min and params.stop_list:
                reason = self._check_stop_strings(seq, prev_len)
        if reason is None and (n_out >= group.max_tokens or seq.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None and seq.detok is not None and not isinstance(seq.stop_reason, str):
            seq.text += seq.detok.flush()  # a text cut at a stop string stays cut
        return reason

    @staticmethod
    def _check_stop_strings(seq: Sequence, prev_len: int) -> str | None:
        """Find a stop string in the new text (and the few chars before it that could start one); cut the text
        before it. Never looks inside text already streamed out, so a cut cannot retract emitted text."""
        stops = seq.params.stop_list
        longest = max(len(s) for s in stops)
        start = max(seq.num_emitted_chars, prev_len - longest + 1, 0)
        best: tuple[int, str] | None = None
        for s in stops:
            pos = seq.text.find(s, start)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        if best is None:
            return None
        seq.text = seq.text[: best[0]]
        seq.stop_reason = best[1]
        return "stop"

    @staticmethod
    def delta(seq: Sequence) -> StreamDelta:
        """What seq produced since its previous delta. While running, the last len(longest stop)-1 chars are held
        back: they might be the start of a stop string that must not reach the client."""
        hold = 0
        if not seq.finished and seq.params.stop_list:
            hold = max(len(s) for s in seq.params.stop_list) - 1
        upto = max(len(seq.text) - hold, seq.num_emitted_chars)
        text = seq.text[seq.num_emitted_chars : upto]
        seq.num_emitted_chars = upto
        new_ids = seq.output_token_ids[seq.num_emitted_tokens :]
        lps = seq.logprobs[seq.num_emitted_tokens :] if seq.logprobs is not None else None
        seq.num_emitted_tokens = seq.num_output_tokens
        g = seq.group
        return StreamDelta(
            request_id=g.request_id,
            index=seq.index,
            text_delta=text,
            token_ids=new_ids,
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=len(g.prompt_token_ids),
            num_generated_tokens=seq.num_output_tokens,
            ttft_s=g.metrics.ttft,
            logprobs=lps,
            stop_reason=seq.stop_reason,
        )
