"""Grounded (quote) decoding: a per-request token constraint under which an answer can only quote its passages.

At each step the next token must do one of these (the model chooses among them; nothing else can be sampled):
- continue a span copied verbatim from one of the numbered passages;
- start a new span at a sentence or clause boundary of a passage (after `. ! ? ; : ,` or a line break);
- emit the citation marker ` [n]` of the passage the current span came from, once the span has reached a
  sentence or clause end (`. ! ? ; :`, a line break, or the passage's end);
- end the answer (eos), right after a marker whose span ended a sentence (`. ! ?`, a line break, the end);
- (optionally, as the whole answer) say the refusal sentence, e.g. "The passages do not say.", then end.
So an answer is a sequence of verbatim quotes, each followed by the marker of a passage it is found in.

Everything is matched in token space, so it works for every tokenizer (byte-level BPE, Metaspace): a passage is
tokenized once, as it reads after a space (the way it follows the previous quote's marker), and a span is a
contiguous slice of those tokens, so its text is exactly the passage's characters, up to whitespace: inside a
paragraph, line wraps and runs of spaces read as one space (`quotable`), as a person quoting would write them and
as the bundled model's fine-tuning answers do. Markers are tokenized the same way, in context after a sentence
end. The answer's first quote may also start without its leading space ("The", not " The").

    QuoteIndex (built once per request, immutable, shared by its n sequences): the passages' tokens, an index
        from token id to the span starts it opens, the boundary flags, the markers' tokens.
    QuoteConstraint (one per sequence): the set of positions the output so far can be at (a small NFA state:
        a span may be found in several passages), `allowed()` -> (token ids, may end), `advance(token)`.

The state is a function of the output tokens (`QuoteIndex.state_after`), so a preempted sequence that recomputes
its prompt and output keeps its state unchanged, and a speculative draft is checked by advancing a `copy()`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["QuoteConstraint", "QuoteIndex", "quotable"]

START_AFTER = ".!?;:,"  # a span may start after these (plus whitespace) or after a line break
CLAUSE_END = ".!?;:"  # a marker may follow a span that ends with these (or a line break, or the passage's end)
SENTENCE_END = ".!?"  # the answer may end after the marker of a span that ends with these (or the same breaks)
_CONTEXT = "x."  # what a passage or a marker is tokenized after: it reads after a sentence end and a space


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class _Span:  # inside a quote of passage p; its next token would be tokens[p][i]; `seen`: it has visible text
    p: int
    i: int
    seen: bool


@dataclass(frozen=True, slots=True)
class _Marker:  # k tokens of passage p's marker emitted; `ends` = the quote ended a sentence
    p: int
    k: int
    ends: bool


@dataclass(frozen=True, slots=True)
class _Between:  # after a marker: a new quote may start; `ends` = the answer may end here
    ends: bool


@dataclass(frozen=True, slots=True)
class _Lead:  # k tokens emitted of the first word (without its space) of the quote starting at tokens[p][i]
    p: int
    i: int
    k: int


@dataclass(frozen=True, slots=True)
class _Refusal:  # k tokens of the refusal sentence emitted
    k: int


@dataclass(frozen=True, slots=True)
class _Start:  # no output yet
    pass


@dataclass(frozen=True, slots=True)
class _Done:  # after the whole refusal: only the end is left
    pass


_State = _Span | _Marker | _Between | _Lead | _Refusal | _Start | _Done
_START: frozenset[_State] = frozenset({_Start()})


def quotable(text: str) -> str:
    """A passage as it is quoted: paragraphs (split at blank lines) kept, whitespace inside each one collapsed."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", text.strip()))
    return "\n\n".join(p for p in paragraphs if p)


def in_context(tokenizer: TokenizerLike, text: str) -> tuple[list[int], str, list[int]]:
    """The tokens of `text` as it reads after a sentence end and a space, the text they decode to there, and the
    context tokens they follow (decoding them after it keeps their leading space)."""
    ctx = tokenizer.encode(_CONTEXT)
    ids = tokenizer.encode(f"{_CONTEXT} {text}")
    if ids[: len(ctx)] == ctx:
        full, head = tokenizer.decode(ids), tokenizer.decode(ctx)
        if full.startswith(head):
            return ids[len(ctx) :], full[len(head) :], ctx
    tail = tokenizer.encode(text)  # a tokenizer that merges across the space: the passage on its own
    return tail, tokenizer.decode(tail), []


@dataclass(frozen=True)
class _Passage:
    tokens: tuple[int, ...]
    marker: tuple[int, ...]  # the tokens of " [number]"
    starts: tuple[int, ...]  # token indices a quote may start at
    clause_end: tuple[bool, ...]  # per position 0..len(tokens): a quote may end here (marker next)
    sentence_end: tuple[bool, ...]  # per position: a quote ending here may end the answer
    visible: tuple[bool, ...]  # per token: it has non-whitespace text (a quote of only spaces gets no marker)
    leads: dict[int, tuple[tuple[int, ...], int]]  # start -> (its first word's tokens without the space, next index)


def _boundaries(
    tokenizer: TokenizerLike, tokens: Sequence[int], text: str, ctx: list[int]
) -> tuple[list[int], list[bool], list[bool], list[bool], dict[int, tuple[tuple[int, ...], int]]]:
    """Span starts, end flags and visible tokens of a passage's tokens (decoding to `text` after `ctx`), from the
    characters each token boundary falls between. A boundary inside a character (a byte-level token splitting a
    UTF-8 sequence) is never a start or an end. A quote starts with its leading space (the token carrying it,
    never after it) and ends on its punctuation (never after a trailing space), so quotes and markers read
    " quote. [1] quote. [2]" whichever side of the space a tokenizer puts it."""
    n = len(tokens)
    head = len(tokenizer.decode(ctx)) if ctx else 0
    starts, clause, sentence = [], [False] * (n + 1), [False] * (n + 1)
    offsets: list[int | None] = []
    anchor, anchor_at = 0, 0  # the last clean boundary and its offset: decode only the tokens since it (O(n))
    for i in range(n + 1):
        prefix = text[:anchor_at] + tokenizer.decode([*ctx, *tokens[anchor:i]])[head:] if i < n else text
        clean = text.startswith(prefix) and not prefix.endswith("\ufffd")
        offsets.append(len(prefix) if clean else None)
        if not clean:
            continue
        anchor, anchor_at = i, len(prefix)
        k = len(prefix)
        before, rest = prefix.rstrip(), text[k:]
        # A blank line is a boundary (paragraphs, list items, headings); a single line break is a soft wrap.
        paragraph = (prefix[len(before) :] + rest[: len(rest) - len(rest.lstrip())]).count("\n") >= 2
        spaced = rest[:1] == "" or rest[:1].isspace()
        last = before[-1:]
        if i < n and (i == 0 or (prefix[-1:] not in (" ", "\t") and (paragraph or (spaced and last in START_AFTER)))):
            starts.append(i)
        if i > 0 and (i == n or (not prefix[-1:].isspace() and (paragraph or (spaced and last in CLAUSE_END)))):
            clause[i] = True
            sentence[i] = i == n or paragraph or last in SENTENCE_END
    visible = []
    for i in range(n):  # a token inside a character counts as visible (its bytes are not whitespace)
        a, b = offsets[i], offsets[i + 1]
        visible.append(a is None or b is None or bool(text[a:b].strip()))
    # The first quote of an answer may also start without its leading space ("The", not " The"): the way an
    # answer's first word is tokenized, and what a model fine-tuned on answers expects there.
    leads = {}
    for i in starts:
        a, j = offsets[i], i + 1  # tokens i..j-1: the space and the first visible text after it
        while j < n and (offsets[j] is None or not text[a : offsets[j]].strip()):
            j += 1
        end = offsets[j] if j <= n else None
        word = text[a:end] if a is not None and end is not None else ""
        if word[:1].isspace() and word.strip():
            ids = tokenizer.encode(word.lstrip())
            if ids and ids != list(tokens[i:j]) and tokenizer.decode(ids) == word.lstrip():
                leads[i] = (tuple(ids), j)
    return starts, clause, sentence, visible, leads


class QuoteIndex:
    """The quotable passages of one request. passages: (citation number, text) in prompt order; refusal: a
    sentence the model may answer with instead (alone, uncited), or None."""

    def __init__(
        self, tokenizer: TokenizerLike, passages: Sequence[tuple[int, str]], refusal: str | None = None
    ) -> None:
        built = []
        for number, text in passages:
            tokens, decoded, ctx = in_context(tokenizer, quotable(text))
            marker, _, _ = in_context(tokenizer, f"[{number}]")
            starts, clause, sentence, visible, leads = _boundaries(tokenizer, tokens, decoded, ctx)
            built.append(
                _Passage(
                    tuple(tokens), tuple(marker), tuple(starts), tuple(clause), tuple(sentence), tuple(visible), leads
                )
            )
        self.passages: list[_Passage] = built
        self.numbers = [number for number, _ in passages]
        self.refusal: tuple[int, ...] = tuple(tokenizer.encode(refusal)) if refusal else ()
        # token id -> the quote states it starts (their next index): looked up, not searched, at each start.
        self.start_index: dict[int, list[_Span]] = {}
        for p, passage in enumerate(built):
            for i in passage.starts:
                self.start_index.setdefault(passage.tokens[i], []).append(_Span(p, i + 1, passage.visible[i]))
        # The answer's first token may also be a lead (a first word without its space) or the refusal's.
        self.lead_index: dict[int, list[_State]] = {}
        for p, passage in enumerate(built):
            for i, (ids, j) in passage.leads.items():
                nxt = _Span(p, j, True) if len(ids) == 1 else _Lead(p, i, 1)
                self.lead_index.setdefault(ids[0], []).append(nxt)
        first = set(self.start_index) | set(self.lead_index) | ({self.refusal[0]} if self.refusal else set())
        self.start_ids = list(first)
        every = [t for q in built for t in (*q.tokens, *q.marker)] + [*self.refusal, *self.lead_index]
        self.max_token_id = max(every, default=-1)  # the engine checks it against the model's vocabulary

    def start(self) -> QuoteConstraint:
        """The state of a sequence with no output yet."""
        return QuoteConstraint(self, _START)

    def state_after(self, token_ids: Iterable[int]) -> QuoteConstraint:
        """The state after `token_ids` (a sequence's output so far, eos excluded); recomputation after preemption."""
        c = self.start()
        for t in token_ids:
            c.advance(t)
        return c


class QuoteConstraint:
    """What one sequence may sample next. `allowed()` -> (token ids, whether the answer may end here); the caller
    adds its eos ids when it may end. `advance(token)` after each sampled (non-eos) token."""

    def __init__(self, index: QuoteIndex, states: frozenset[_State], num_tokens: int = 0):
        self.index = index
        self.states = states
        self.num_tokens = num_tokens  # tokens advanced through

    def copy(self) -> QuoteConstraint:
        return QuoteConstraint(self.index, self.states, self.num_tokens)  # states are immutable: shared

    def after(self, token_ids: Sequence[int]) -> QuoteConstraint:
        """A copy advanced through token_ids as far as they are allowed (a speculative draft's row state: the
        rows past a disallowed draft token are never accepted, so any valid state serves them)."""
        c = self.copy()
        for t in token_ids:
            if not c.accepts(t):
                break
            c.advance(t)
        return c

    @property
    def can_end(self) -> bool:
        if not self.index.start_index and self.states == _START:
            return True  # no passage to quote: the answer may be empty (or the refusal)
        return any((type(s) is _Between and s.ends) or type(s) is _Done for s in self.states)

    def allowed(self) -> tuple[list[int], bool]:
        """The token ids that keep the output a valid quoted answer (never empty unless it may end), and whether
        it may end now. Work proportional to the answer (the states and the allowed tokens)."""
        idx = self.index
        ids: set[int] = set()
        for s in self.states:
            if type(s) is _Span:
                passage = idx.passages[s.p]
                if s.i < len(passage.tokens):
                    ids.add(passage.tokens[s.i])
                if s.seen and passage.clause_end[s.i]:
                    ids.add(passage.marker[0])
            elif type(s) is _Marker:
                ids.add(idx.passages[s.p].marker[s.k])
            elif type(s) is _Lead:
                ids.add(idx.passages[s.p].leads[s.i][0][s.k])
            elif type(s) is _Refusal:
                ids.add(idx.refusal[s.k])
            elif type(s) is _Start:
                ids.update(idx.start_ids)  # (the refusal's first token among them)
            elif type(s) is _Between:
                ids.update(idx.start_index)
        return list(ids), self.can_end

    def only_next(self) -> int | None:
        """The token that must come next, when exactly one is allowed and the answer may not end here (the rest
        of a quoted clause, a marker's remaining tokens), else None: what a speculative drafter proposes without
        guessing. Cheap where a new quote may start (no scan of every start token)."""
        if any(type(s) is _Start or type(s) is _Between for s in self.states):
            return None
        ids, may_end = self.allowed()
        return ids[0] if len(ids) == 1 and not may_end else None

    def accepts(self, token_id: int) -> bool:
        return bool(self._next(token_id))

    def advance(self, token_id: int) -> None:
        """Follow a sampled token. A token allowed() did not offer raises ValueError (the state is unchanged)."""
        nxt = self._next(token_id)
        if not nxt:
            raise ValueError(f"token {token_id} is not allowed by the quote constraint here")
        self.states = nxt
        self.num_tokens += 1

    def _next(self, t: int) -> frozenset[_State]:
        idx = self.index
        out: set[_State] = set()
        for s in self.states:
            if type(s) is _Span:
                passage = idx.passages[s.p]
                if s.i < len(passage.tokens) and passage.tokens[s.i] == t:
                    out.add(_Span(s.p, s.i + 1, s.seen or passage.visible[s.i]))
                if s.seen and passage.clause_end[s.i] and passage.marker[0] == t:
                    out.add(_marker(passage, s.p, 1, passage.sentence_end[s.i]))
            elif type(s) is _Marker:
                passage = idx.passages[s.p]
                if passage.marker[s.k] == t:
                    out.add(_marker(passage, s.p, s.k + 1, s.ends))
            elif type(s) is _Lead:
                lead, j = idx.passages[s.p].leads[s.i]
                if lead[s.k] == t:
                    out.add(_Span(s.p, j, True) if s.k + 1 == len(lead) else _Lead(s.p, s.i, s.k + 1))
            elif type(s) is _Refusal:
                if idx.refusal[s.k] == t:
                    out.add(_Done() if s.k + 1 == len(idx.refusal) else _Refusal(s.k + 1))
            elif type(s) is _Start or type(s) is _Between:
                out.update(idx.start_index.get(t, ()))
                if type(s) is _Start:
                    out.update(idx.lead_index.get(t, ()))
                if type(s) is _Start and idx.refusal and idx.refusal[0] == t:
                    out.add(_Done() if len(idx.refusal) == 1 else _Refusal(1))
        return frozenset(out)


def _marker(passage: _Passage, p: int, k: int, ends: bool) -> _State:
    return _Between(ends) if k == len(passage.marker) else _Marker(p, k, ends)
