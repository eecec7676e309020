"""REST for documents:

    POST   /v1/collections/{c}/documents        JSON {"documents": [{"id"?, "text", "metadata"?, "source"?}]}, or a
                                                multipart upload of files ("file" / "files" fields)
    GET    /v1/collections/{c}/documents/{id}   the document (?include_chunks=true: with its chunks' spans)
    DELETE /v1/collections/{c}/documents/{id}

Uploaded files are read exactly as `pqrag ingest` reads them (retrieval.loaders: text, Markdown, HTML, PDF page by
page, JSON, JSON lines), each file on its own: a file that cannot be read (a scanned PDF without text, broken
JSON, an unsupported type) gets its error in the answer and the other files are stored. Document ids are the
file names (PDF pages: "name.pdf#page=N"); ids may hold "/" and "#": percent-encode them in URLs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import PqragError
from retrieval import Collection, Document, IngestResult, load_file
from retrieval.loaders import SUPPORTED
from service.http.auth import authorize
from service.http.context import HttpContext
from service.http.errors import ApiError, api_error_of

router = APIRouter(prefix="/v1/collections/{collection}/documents", tags=["documents"])


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    text: str
    metadata: dict[str, Any] | None = None
    source: str | None = None


class IngestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn]


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": IngestBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
}


def _ctx(request: Request) -> HttpContext:
    return request.app.state.ctx


def _record(ctx: HttpContext, collection: str, results: list[IngestResult]) -> None:
    ctx.metrics.ingested_documents.labels(collection).inc(len(results))
    ctx.metrics.ingested_chunks.labels(collection).inc(sum(r.chunk_count for r in results))


def ingest_documents(ctx: HttpContext, collection: str, body: IngestBody) -> dict[str, Any]:
    coll = ctx.collections.get(collection)
    docs = [Document(d.id, d.text, d.metadata or {}, d.source or "") for d in body.documents]
    results = coll.ingest(docs)
    _record(ctx, collection, results)
    return {
        "object": "list",
        "data": [{"id": r.doc_id, "chunk_count": r.chunk_count, "replaced": r.replaced} for r in results],
        "document_count": len(results),
        "chunk_count": sum(r.chunk_count for r in results),
    }


def _skip_reason(message: str) -> str:
    """The loader reports an unsupported file as its bare name and other skips as "name (reason)"."""
    if message.endswith(")") and " (" in message:
        return message.split(" (", 1)[1][:-1]
    return f"unsupported file type (pqrag reads {' '.join(sorted(SUPPORTED))})"


def ingest_file(coll: Collection, folder: Path, filename: str, data: IO[bytes]) -> dict[str, Any]:
    """Store the documents of one uploaded file; its result, with "error" set when it gave none."""
    name = PurePosixPath(filename.replace("\\", "/")).name  # never a path of the client's choosing
    result: dict[str, Any] = {"filename": name, "document_ids": [], "chunk_count": 0, "skipped": [], "error": None}
    if not name or name.startswith("."):
        result["error"] = "the file needs a name (with an extension saying its type)"
        return result
    path = folder / name
    with open(path, "wb") as f:
        shutil.copyfileobj(data, f)
    skipped: list[str] = []
    try:
        docs = list(load_file(path, folder, skipped.append))
        if not docs:
            result["error"] = _skip_reason(skipped[0]) if skipped else "no documents in the file"
            return result
        results = coll.ingest(docs)
    except PqragError as exc:
        result["error"], result["status"] = str(exc), api_error_of(exc).status
        return result
    finally:
        path.unlink(missing_ok=True)
    result["document_ids"] = [r.doc_id for r in results]
    result["chunk_count"] = sum(r.chunk_count for r in results)
    result["skipped"] = skipped  # records of the file left out (a JSON line without text, ...)
    result["results"] = results
    return result


def ingest_files(ctx: HttpContext, collection: str, files: list[tuple[str, IO[bytes]]]) -> dict[str, Any]:
    coll = ctx.collections.get(collection)
    with tempfile.TemporaryDirectory(prefix="pqrag-upload-") as folder:
        done = [ingest_file(coll, Path(folder), name, data) for name, data in files]
    for r in done:
        _record(ctx, collection, r.pop("results", []))
    failed = [r for r in done if r["error"] is not None]
    if failed and len(failed) == len(done):
        message = "; ".join(f"{r['filename']}: {r['error']}" for r in failed)
        raise ApiError(failed[0].get("status", 400), message, param="files", code="unreadable_file")
    for r in done:
        r.pop("status", None)
    return {
        "object": "list",
        "data": done,
        "document_count": sum(len(r["document_ids"]) for r in done),
        "chunk_count": sum(r["chunk_count"] for r in done),
        "errors": len(failed),
    }


@router.post("", openapi_extra=UPLOAD_SCHEMA)
async def ingest(request: Request, collection: str) -> dict[str, Any]:
    """Store documents, given as JSON or as uploaded files (multipart/form-data, fields "file" or "files")."""
    await authorize(request, "write", collection)
    ctx = _ctx(request)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:
            uploads = [u for key in ("file", "files") for u in form.getlist(key) if not isinstance(u, str)]
            if not uploads:
                raise ApiError(400, 'upload the files in multipart fields named "file" or "files"', param="files")
            return await ctx.run(ingest_files, ctx, collection, [(u.filename or "", u.file) for u in uploads])
    try:
        body = IngestBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return await ctx.run(ingest_documents, ctx, collection, body)


def _document_json(ctx: HttpContext, collection: str, document_id: str, include_chunks: bool) -> dict[str, Any]:
    doc = ctx.collections.get(collection).get_document(document_id, include_chunks=include_chunks)
    chunks = None
    if doc.chunks is not None:
        chunks = [{"id": c.chunk_id, "text": c.text, "start": c.start, "end": c.end} for c in doc.chunks]
    return {
        "object": "document",
        "id": doc.id,
        "text": doc.text,
        "metadata": doc.metadata,
        "source": doc.source,
        "chunk_count": doc.chunk_count,
        "chunks": chunks,
        "created_at": doc.created_at,
        "updated_at": doc.updated_at,
    }


@router.get("/{document_id:path}")
async def get_document(request: Request, collection: str, document_id: str, include_chunks: bool = False):
    await authorize(request, "read", collection)
    ctx = _ctx(request)
    return await ctx.run(_document_json, ctx, collection, document_id, include_chunks)


@router.delete("/{document_id:path}")
async def delete_document(request: Request, collection: str, document_id: str) -> dict[str, Any]:
    await authorize(request, "write", collection)
    ctx = _ctx(request)
    chunks = await ctx.run(lambda: ctx.collections.get(collection).delete_document(document_id))
    return {"id": document_id, "object": "document.deleted", "deleted": True, "chunk_count": chunks}
