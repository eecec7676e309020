"""Corpus sources: files read as ingestion reads them, chat records, a pqrag collection read through retrieval's
public API (also while a server holds the data directory), Python's docs, and the checks of a CorpusSpec."""

from __future__ import annotations

import json

import pytest

from llm.train.corpus import ChatRecord, CorpusError, CorpusSpec, collection_texts, file_texts, pydoc_texts


@pytest.fixture
def notes_dir(tmp_path):
    """A real data directory with a collection "notes" of two documents and another
    collection, created through retrieval's public API; yields (data_dir, the open Collections), whose lock is
    held, as a running server holds it."""
    from retrieval import Collections

    with Collections(tmp_path, device="cpu") as colls:
        colls.create("notes").ingest(
            [
                {"id": "b", "text": "second document"},
                {"id": "a", "text": "first document"},
            ]
        )
        colls.create("other").ingest([{"id": "z", "text": "not in notes"}])
        yield tmp_path, colls


def test_file_texts_reads_txt_md_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.md").write_text("# title\nbody")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n" + json.dumps({"text": ""}) + "\n")
    (tmp_path / "d.pdf").write_bytes(b"%PDF")
    assert sorted(file_texts([tmp_path])) == ["# title\nbody", "from jsonl", "plain text"]
    with pytest.raises(CorpusError, match="does not exist"):
        list(file_texts([tmp_path / "missing"]))


def test_file_texts_reads_chat_records_and_names_a_malformed_one(tmp_path):
    msgs = [{"role": "user", "content": "what jumps?"}, {"role": "assistant", "content": "The fox"}]
    f = tmp_path / "sft.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"messages": msgs}, {"text": "plain doc"}, {"id": 3}]) + "\n")
    assert list(file_texts([f])) == [ChatRecord(tuple(msgs)), "plain doc"]  # no text: skipped, as in ingestion
    assert ChatRecord(tuple(msgs)).text() == "what jumps?\nThe fox"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    with pytest.raises(CorpusError, match=r"bad.jsonl:1: message 0 needs role"):
        list(file_texts([tmp_path / "bad.jsonl"]))


def test_corpus_spec_validation(tmp_path):
    with pytest.raises(CorpusError, match="no training data"):
        CorpusSpec().validate()
    with pytest.raises(CorpusError, match="does not exist"):
        CorpusSpec(paths=[str(tmp_path / "nope")]).validate()
    with pytest.raises(CorpusError, match=r"no pqrag store .*--from-collection 'docs'"):
        CorpusSpec(collection="docs", data_dir=str(tmp_path)).validate()


def test_collection_texts_reads_documents_while_the_directory_is_held(notes_dir):
    data_dir, colls = notes_dir
    # whole documents in doc_id order, from this collection only, while the lock stays held
    assert list(collection_texts(data_dir, "notes")) == ["first document", "second document"]
    with pytest.raises(CorpusError, match=r"collection 'other2' not found .*\['notes', 'other'\]"):
        collection_texts(data_dir, "other2")  # at the call, not on the first next()
    spec = CorpusSpec(collection="notes", data_dir=str(data_dir))
    spec.validate()
    fp = spec.fingerprint()
    assert len(fp) == 16 and spec.fingerprint() == fp
    assert list(spec.texts()) == ["first document", "second document"]
    colls.get("notes").ingest([{"id": "d", "text": "third document"}])
    assert spec.fingerprint() != fp  # new documents: new shards
    with pytest.raises(CorpusError, match="not found"):
        CorpusSpec(collection="nope", data_dir=str(data_dir)).validate()


def test_file_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    spec = CorpusSpec(paths=[str(tmp_path)])
    fp = spec.fingerprint()
    assert spec.fingerprint() == fp
    (tmp_path / "a.txt").write_text("one more")
    assert spec.fingerprint() != fp


def test_pydoc_texts_starts_with_topics_then_stdlib_docstrings():
    it = pydoc_texts()
    from pydoc_data.topics import topics

    first = [next(it) for _ in range(len(topics) + 3)]
    assert first[0] == topics[sorted(topics)[0]]
    assert all(isinstance(t, str) and t.strip() for t in first[len(topics) :])
