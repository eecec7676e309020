"""Lexical retrieval: a user's text -> a safe FTS5 query -> the chunks that best match its words (bm25).

    match = match_query("what's NEAR(the) \"moon\"*?")     # '"what" OR "s" OR "near" OR "moon"'
    rows = store.lexical_search(cid, match, limit=50)      # (n, 2): chunk id, bm25 score (higher is better)

User text is never read as FTS5 query syntax. It is cut into words (runs of Unicode letters and digits, which is
where SQLite's unicode61 tokenizer cuts too), and each word is written as an FTS5 string ("..."), the one construct in
which quotes, NEAR, AND/OR/NOT, column filters (`text:`), prefix `*`, initial-token `^` and parentheses are plain
text; the strings are OR-ed, so a chunk matches if it holds any of the words and bm25 ranks it (porter stems both
sides: "running" finds "runs").

Stop words ("the", "of", "what", ...) are dropped when the query holds other words: bm25 gives them almost no
weight, yet each one makes most of the collection a candidate to score. Measured on SciFact's training claims
(bench/hybrid.py), dropping them does not change nDCG@10 and makes lexical search faster.
"""

from __future__ import annotations

import re

# Letters, digits and combining marks: unicode61's token characters (it splits on everything else, "_" included).
WORD = re.compile(r"[^\W_]+(?:[\u0300-\u036f]+[^\W_]*)*")
MAX_TERMS = 64  # distinct words per query; longer texts (a chat's whole turn) keep their first 64

# A common English list (Lucene's and NLTK's intersection, plus question words): words that carry no topic.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
    only or other our ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves""".split()
)


def words(text: str) -> list[str]:
    """The distinct words of `text`, lowercased, in order of first appearance (at most MAX_TERMS)."""
    seen: dict[str, None] = {}
    for w in WORD.findall(text.lower()):
        seen.setdefault(w, None)
        if len(seen) == MAX_TERMS:
            break
    return list(seen)


def match_query(text: str, stop_words: bool = True) -> str | None:
    """The FTS5 query for a user's text: its words as FTS5 strings, OR-ed; None when it has no word at all.

    stop_words: drop STOP_WORDS unless nothing else is left.
    """
    terms = words(text)
    if stop_words:
        terms = [w for w in terms if w not in STOP_WORDS] or terms
    if not terms:
        return None
    # an FTS5 string is "..." with " doubled inside; WORD never yields a quote, the escape keeps that a guarantee
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in terms)
