"""REST for documents over real HTTP: JSON ingestion, multipart uploads read like `pqrag ingest` reads files (PDF
pages with their page number, a text-less PDF refused while the rest of the batch is stored), get and delete,
and the request body limit (413)."""

from __future__ import annotations

import pytest

from retrieval.loaders import PDF_NO_TEXT
from tests.pdf_fixtures import make_pdf


@pytest.fixture
def coll(http):
    assert http.post("/v1/collections", json={"name": "docs"}).status_code == 201
    yield "docs"
    http.delete("/v1/collections/docs")


def test_json_documents_get_and_delete(http, coll):
    docs = [
        {"id": "notes/a#1", "text": "Basalt is a volcanic rock.", "metadata": {"kind": "rock"}, "source": "a.md"},
        {"text": "An id is assigned when none is given."},
    ]
    r = http.post(f"/v1/collections/{coll}/documents", json={"documents": docs})
    assert r.status_code == 200
    body = r.json()
    assert body["document_count"] == 2 and body["data"][0] == {"id": "notes/a#1", "chunk_count": 1, "replaced": False}
    assert len(body["data"][1]["id"]) == 36  # a UUID
    again = http.post(f"/v1/collections/{coll}/documents", json={"documents": docs[:1]}).json()
    assert again["data"][0]["replaced"] is True

    doc = http.get(f"/v1/collections/{coll}/documents/notes%2Fa%231", params={"include_chunks": "true"}).json()
    assert doc["id"] == "notes/a#1" and doc["metadata"] == {"kind": "rock"} and doc["source"] == "a.md"
    assert doc["chunks"] == [{"id": doc["chunks"][0]["id"], "text": docs[0]["text"], "start": 0, "end": 26}]
    assert http.get(f"/v1/collections/{coll}/documents/notes/a%231").json()["chunks"] is None  # a "/" may stay
    deleted = http.delete(f"/v1/collections/{coll}/documents/notes%2Fa%231").json()
    assert deleted == {"id": "notes/a#1", "object": "document.deleted", "deleted": True, "chunk_count": 1}
    missing = http.get(f"/v1/collections/{coll}/documents/notes%2Fa%231")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]["message"]

    bad = http.post(f"/v1/collections/{coll}/documents", json={"documents": [{"text": "  "}]})
    assert bad.status_code == 400 and "empty text" in bad.json()["error"]["message"]
    bad = http.post(f"/v1/collections/{coll}/documents", json={"documents": [{"txt": "x"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("documents[0]")
    assert http.post("/v1/collections/nope/documents", json={"documents": docs}).status_code == 404


def test_uploads_read_pdfs_by_page_and_a_bad_file_does_not_stop_the_batch(http, coll):
    files = [
        ("files", ("geo.pdf", make_pdf(["Volcanoes erupt when magma rises.", "", "Basalt cools from lava."]))),
        ("files", ("scan.pdf", make_pdf(["", ""]))),
        ("files", ("notes.md", b"# Notes\n\nObsidian is volcanic glass.")),
        ("files", ("picture.png", b"\x89PNG")),
    ]
    r = http.post(f"/v1/collections/{coll}/documents", files=files)
    assert r.status_code == 200
    body = r.json()
    assert body["document_count"] == 3 and body["errors"] == 2
    by_name = {f["filename"]: f for f in body["data"]}
    assert (
        by_name["geo.pdf"]["document_ids"] == ["geo.pdf#page=1", "geo.pdf#page=3"]
        and by_name["geo.pdf"]["error"] is None
    )
    assert by_name["scan.pdf"]["error"] == PDF_NO_TEXT and by_name["scan.pdf"]["document_ids"] == []
    assert by_name["notes.md"]["document_ids"] == ["notes.md"]
    assert by_name["picture.png"]["error"].startswith("unsupported file type")

    # The page travels with every chunk of the page: hits (and their filters) name it.
    hits = http.post(f"/v1/collections/{coll}/search", json={"query": "basalt lava", "top_k": 1}).json()["data"]
    assert hits[0]["document_id"] == "geo.pdf#page=3" and hits[0]["metadata"]["page"] == 3
    assert hits[0]["source"] == "geo.pdf" and hits[0]["metadata"]["file_type"] == "pdf"
    page1 = http.post(f"/v1/collections/{coll}/search", json={"query": "rock", "filter": {"page": 1}}).json()["data"]
    assert {h["document_id"] for h in page1} == {"geo.pdf#page=1"}

    # Only bad files: the request itself fails, with each file's reason.
    r = http.post(f"/v1/collections/{coll}/documents", files=[("file", ("scan.pdf", make_pdf([""])))])
    assert r.status_code == 400 and r.json()["error"]["message"] == f"scan.pdf: {PDF_NO_TEXT}"
    r = http.post(f"/v1/collections/{coll}/documents", files=[("other", ("a.txt", b"x"))])
    assert r.status_code == 400 and '"file" or "files"' in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_413_before_and_while_reading(http, http_server, coll):
    limit = http_server.server.http.ctx.max_body_bytes
    big = {"documents": [{"text": "x" * (limit + 10)}]}
    r = http.post(f"/v1/collections/{coll}/documents", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"documents": [{"text": "'
        for _ in range(limit // 65536 + 1):
            yield b"y" * 65536
        yield b'"}]}'

    r = http.post(f"/v1/collections/{coll}/documents", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert http.get(f"/v1/collections/{coll}").json()["document_count"] == 0
