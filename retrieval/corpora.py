"""Corpora every Python installation carries, for the demo and the default generator's training.

`python_docs()` yields the reference-manual topics that `help()` shows (pydoc_data.topics): about
80 documents, ~460k characters of real technical prose, always present, no download.
"""

from __future__ import annotations

from collections.abc import Iterator


def python_docs() -> Iterator[dict]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield {
                "id": f"pydoc-{name}",
                "text": text,
                "metadata": {"corpus": "pydoc", "topic": name},
                "source": f"pydoc_data/topics.py#{name}",
            }
