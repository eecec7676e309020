import pytest

from retrieval.store import Store


@pytest.fixture
def store(tmp_path):
    """A real SQLite store in a fresh file, closed after the test."""
    s = Store(tmp_path / "test.sqlite3")
    yield s
    s.close()
