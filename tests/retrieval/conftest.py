import pytest

from retrieval.catalog import Collections
from retrieval.embedder import get_embedder
from retrieval.store import Store


@pytest.fixture
def store(tmp_path):
    """A real SQLite store in a fresh file, closed after the test."""
    s = Store(tmp_path / "test.sqlite3")
    yield s
    s.close()


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(device="cpu")  # warms the process-wide model cache once


@pytest.fixture
def colls(tmp_path, embedder):
    """The collections of a fresh data directory (embedders on the CPU), closed after the test."""
    c = Collections(tmp_path / "data", device="cpu")
    yield c
    c.close()
