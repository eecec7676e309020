"""A real pqrag server on a free port, in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest

from service.client import Client
from service.server import ServerConfig, create_server


class ServerThread:
    def __init__(self, data_dir: Path, **config):
        # No extractive reader unless a test asks for one (reader=service.config.BUNDLED_READER): loading it takes a
        # second, which most servers here would spend for nothing. ServerConfig's own default is the bundled reader.
        config.setdefault("reader", None)
        self.config = ServerConfig(data_dir=str(data_dir), port=0, **config)
        self.port: int | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.server = await create_server(self.config)
        self.port = self.server.port
        self._stop = asyncio.Event()
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(grace=1)

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kw) -> Client:
        return Client(self.target, **kw)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)


@pytest.fixture
def server(tmp_path):
    srv = ServerThread(tmp_path / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with server.client(timeout=120) as c:
        yield c


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def make_tiny_model(directory: Path, seed: int = 0, max_position_embeddings: int = 512) -> Path:
    """A random-weight tiny generator with a BPE tokenizer trained on the fixture documents, saved like the
    trainer's export (config.json, model.safetensors, tokenizer.json). Random weights: the answers are noise, but
    every path (prompt, paged cache, streaming, cancellation) is the real one."""
    import torch

    from llm.checkpoint import save_model
    from llm.config import get_config
    from llm.model import CausalLM
    from llm.tokenizer import train_bpe_tokenizer

    texts = [p.read_text() for p in sorted((FIXTURES / "docs").iterdir()) if p.suffix != ".pdf"]
    tok = train_bpe_tokenizer(texts * 3, vocab_size=400)
    torch.manual_seed(seed)
    model = CausalLM(get_config("tiny", vocab_size=tok.vocab_size, max_position_embeddings=max_position_embeddings))
    save_model(model, directory)
    tok.save(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# Documents of the Collections/Documents/Search tests: two languages, topics to filter on.
DOCS = [
    {
        "id": "volcano",
        "text": "Volcanoes erupt when magma rises through the crust; lava flows and ash clouds follow.",
        "metadata": {"topic": "geology", "lang": "en"},
        "source": "geo.txt",
    },
    {
        "id": "bread",
        "text": "Sourdough bread rises thanks to wild yeast in the starter; bake it in a hot Dutch oven.",
        "metadata": {"topic": "cooking", "lang": "en"},
        "source": "bread.md",
    },
    {
        "id": "chess",
        "text": "The Sicilian Defence answers 1.e4 with c5 and leads to sharp chess positions.",
        "metadata": {"topic": "games", "lang": "en"},
        "source": "chess.html",
    },
    {
        "id": "pain",
        "text": "Le pain au levain lève grâce aux levures sauvages; on le cuit dans une cocotte très chaude.",
        "metadata": {"topic": "cooking", "lang": "fr"},
        "source": "pain.md",
    },
]


def code_of(excinfo) -> grpc.StatusCode:
    return excinfo.value.code()


def ingest_all(client, name, docs):
    return list(client.ingest(name, docs))


# Documents of the Rag tests: one topic each, so the right citation is unambiguous.
RAG_DOCS = [
    {
        "id": "volcano",
        "text": "Volcanoes erupt when magma rises through the crust; lava flows and ash clouds follow.",
        "source": "geo.txt",
        "metadata": {"topic": "geology"},
    },
    {
        "id": "bread",
        "text": "Sourdough bread rises thanks to wild yeast in the starter; bake it in a hot Dutch oven.",
        "source": "bread.md",
        "metadata": {"topic": "cooking"},
    },
    {
        "id": "chess",
        "text": "The Sicilian Defence answers 1.e4 with c5 and leads to sharp chess positions.",
        "source": "chess.html",
        "metadata": {"topic": "games"},
    },
    {
        "id": "saturn",
        "text": "Saturn's rings are made of ice and rock; the planet has more than eighty moons.",
        "source": "planets.json",
        "metadata": {"topic": "space"},
    },
]


def start_rag_server(data_dir: Path, **config) -> ServerThread:
    """A started server (ServerConfig fields: model, ...) with a collection "kb" of RAG_DOCS."""
    srv = ServerThread(data_dir, **config).start()
    with srv.client(timeout=120) as c:
        c.create_collection("kb")
        list(c.ingest("kb", RAG_DOCS))
    return srv


@pytest.fixture(scope="module")
def rag_server(tmp_path_factory, tiny_model_dir):
    """A server with the tiny generator and a collection "kb" of RAG_DOCS (one per test module)."""
    srv = start_rag_server(tmp_path_factory.mktemp("rag") / "data", model=str(tiny_model_dir))
    yield srv
    srv.stop()
