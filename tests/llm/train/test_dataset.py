"""The run's tokenizer: a BPE trained on the corpus, refused on an empty one."""

from __future__ import annotations

import pytest

from llm.train.corpus import ChatRecord, CorpusError
from llm.train.dataset import train_tokenizer
from tests.llm.train.conftest import DOCS


def test_train_tokenizer_roundtrip_and_empty_corpus(tok):
    assert 263 <= tok.vocab_size <= 300 and tok.eos_id == 0
    assert tok.decode(tok.encode(DOCS[3])) == DOCS[3]
    with pytest.raises(CorpusError, match="empty"):
        train_tokenizer(iter(["", "   \n"]), vocab_size=300)


def test_chat_records_train_the_tokenizer_on_their_contents():
    chat = ChatRecord(({"role": "user", "content": "   "}, {"role": "assistant", "content": "zebra zebra"}))
    tok = train_tokenizer(iter([chat]), vocab_size=300)
    assert tok.eos_id == 0  # a corpus of chat records only is not empty
    with pytest.raises(CorpusError, match="empty"):
        train_tokenizer(iter([ChatRecord(({"role": "user", "content": " "},))]), vocab_size=300)
