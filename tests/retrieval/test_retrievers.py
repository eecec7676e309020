"""Search modes over a real collection (SQLite FTS5 + the vector index + MiniLM): dense, lexical and hybrid; filters
inside each retriever; per-hit ranks and scores; fusion parameters; the collection's default mode; and the checks."""

import pytest

from common.errors import InvalidArgumentError
from retrieval.collection import CollectionConfig
from retrieval.types import Document

DOCS = [
    Document("bread", "Sourdough bread rises thanks to wild yeast in the starter.", {"topic": "food", "lang": "en"}),
    Document("pain", "Le pain au levain lève grâce aux levures sauvages.", {"topic": "food", "lang": "fr"}),
    Document("part", "Replace gasket ZX-9042 on the pump when the seal leaks.", {"topic": "repair", "lang": "en"}),
    Document(
        "seal", "A leaking seal on a water pump means the gasket has worn out.", {"topic": "repair", "lang": "en"}
    ),
    Document("moon", "The Moon raises the tides as it orbits the Earth.", {"topic": "space", "lang": "en"}),
    Document("mars", "Mars has two small moons, Phobos and Deimos.", {"topic": "space", "lang": "en"}),
]


@pytest.fixture
def coll(colls):
    c = colls.create("modes")
    c.ingest(DOCS)
    return c


def ids(hits):
    return [h.doc_id for h in hits]


def test_three_modes(coll):
    lexical = coll.search("ZX-9042", k=3, mode="lexical")
    assert ids(lexical) == ["part"]  # a part number: only the chunk holding it matches its words
    assert lexical[0].lexical_rank == 1 and lexical[0].lexical_score == lexical[0].score > 0
    assert lexical[0].dense_rank is None and lexical[0].dense_score is None
    dense = coll.search("why does my pump leak?", k=6, mode="dense")
    assert ids(dense)[0] in ("seal", "part") and len(dense) == 6  # every chunk is somebody's neighbour
    assert [h.dense_rank for h in dense] == list(range(1, 7)) and all(h.lexical_rank is None for h in dense)
    hybrid = coll.search("ZX-9042 pump leak", k=3, mode="hybrid")
    assert ids(hybrid)[0] == "part"  # first in both rankings
    top = hybrid[0]
    assert top.dense_rank is not None and top.lexical_rank == 1

    # the default fusion: 0.4 x the dense score + 0.6 x the lexical score, each min-max normalised over its list
    def norm(hits, score):
        lo, hi = min(score(h) for h in hits), max(score(h) for h in hits)
        return {h.chunk_id: 1.0 if hi == lo else (score(h) - lo) / (hi - lo) for h in hits}

    d = norm(coll.search("ZX-9042 pump leak", k=100, mode="dense"), lambda h: h.dense_score)
    lx = norm(coll.search("ZX-9042 pump leak", k=100, mode="lexical"), lambda h: h.lexical_score)
    for h in hybrid:
        assert h.score == pytest.approx(0.4 * d.get(h.chunk_id, 0.0) + 0.6 * lx.get(h.chunk_id, 0.0))
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


def test_a_search_reports_the_nearest_chunks_dense_score_whatever_fusion_keeps(colls, coll):
    q = "ZX-9042 pump leak"
    nearest = coll.search(q, k=6, mode="dense")[0].dense_score  # every chunk ranked: the true nearest first
    assert coll.search(q, k=1, mode="dense").nearest_score == pytest.approx(nearest)
    lexical_first = coll.search(q, k=1, mode="hybrid", alpha=0.0)  # fusion keeps the lexical best only...
    assert lexical_first.nearest_score == pytest.approx(nearest)  # ...the nearest chunk's score is still known
    assert coll.search(q, k=3, mode="lexical").nearest_score is None  # no dense ranking: not measured
    food = coll.search(q, k=6, mode="dense", filter={"topic": "food"})  # the nearest of the chunks it may return
    assert food.nearest_score == pytest.approx(food[0].dense_score) and food.nearest_score < nearest
    assert colls.create("empty").search(q, k=3).nearest_score is None


def test_the_collection_default_mode(colls, coll):
    assert coll.config.search_mode == "hybrid"
    default = coll.search("ZX-9042 pump leak", k=3)
    assert [h.chunk_id for h in default] == [h.chunk_id for h in coll.search("ZX-9042 pump leak", k=3, mode="hybrid")]
    lex = colls.create("lex", CollectionConfig(search_mode="lexical"))
    lex.ingest(DOCS)
    assert ids(lex.search("Phobos", k=5)) == ["mars"]  # lexical: one match, not five neighbours
    # a vector query is dense whatever the default; lexical and hybrid need words
    v = coll.embedder.embed(["tides"])[0]
    assert coll.search(vector=v, k=1)[0].doc_id == "moon"
    for mode in ("lexical", "hybrid"):
        with pytest.raises(InvalidArgumentError, match="send a query text"):
            coll.search(vector=v, mode=mode)
    with pytest.raises(InvalidArgumentError, match="search_mode"):
        colls.create("bad", CollectionConfig(search_mode="sparse"))


def test_filters_apply_inside_each_retriever(coll):
    for mode in ("dense", "lexical", "hybrid"):
        hits = coll.search("pump seal gasket bread", k=10, mode=mode, filter={"topic": "food"})
        assert hits and all(h.metadata["topic"] == "food" for h in hits), mode
    lex = coll.search("pump seal gasket bread moon", k=2, mode="lexical", filter={"lang": {"$in": ["en"]}})
    assert len(lex) == 2 and all(h.metadata["lang"] == "en" for h in lex)
    assert coll.search("pain levain", k=5, mode="lexical", filter={"lang": "en"}) == []


def test_fusion_parameters(coll):
    q = "ZX-9042 pump leak"
    rrf = coll.search(q, k=4, mode="hybrid", rrf_k=1)
    assert rrf[0].score == pytest.approx(1 / (1 + rrf[0].dense_rank) + 1 / (1 + rrf[0].lexical_rank))
    dense_only = coll.search(q, k=4, mode="hybrid", alpha=1.0)
    assert ids(dense_only)[:2] == ids(coll.search(q, k=2, mode="dense"))
    lexical_only = coll.search(q, k=1, mode="hybrid", alpha=0.0, candidates=20)
    assert ids(lexical_only) == ids(coll.search(q, k=1, mode="lexical"))
    for kwargs, msg in [({"alpha": 2}, "alpha"), ({"rrf_k": -1}, "rrf_k"), ({"candidates": 0}, "candidates")]:
        with pytest.raises(InvalidArgumentError, match=msg):
            coll.search(q, **kwargs)
    with pytest.raises(InvalidArgumentError, match="search mode"):
        coll.search(q, mode="bm25")


def test_lexical_follows_writes_and_reads_no_syntax(coll):
    assert ids(coll.search("Deimos", mode="lexical")) == ["mars"]
    coll.delete_document("mars")
    assert coll.search("Deimos", mode="lexical") == []
    coll.ingest([Document("moon", "Tides follow the Moon; Deimos is not our moon.", {"topic": "space"})])
    assert ids(coll.search("Deimos", mode="lexical")) == ["moon"]  # the replaced text is what matches
    for q in ["NEAR(pump seal)", "text:pump", "pump*", '"unbalanced', "(a OR", "^seal", "?!"]:
        for mode in ("lexical", "hybrid"):
            coll.search(q, k=3, mode=mode)  # never an FTS5 syntax error
    assert coll.search("?!", mode="lexical") == []  # no word at all: nothing matches
