"""pqrag.v1.Documents: streamed ingestion (a summary at the end, or one acknowledgement per durable document),
lookup and deletion."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from common.errors import InvalidArgumentError, PqragError
from pqrag.v1 import documents_pb2, documents_pb2_grpc
from retrieval import Document, IngestResult
from service import convert
from service.servicers.base import Servicer
from service.status import rpc

# Documents handed to one Collection.ingest call: large enough to batch the embedder, small enough
# that acknowledgements keep flowing.
INGEST_BATCH = 32
# A test hook (the kill -9 loop, tests/service/test_crash.py): seconds to wait between a batch's commit and its
# acknowledgements, to widen the window in which a crash leaves documents stored but never acknowledged.
ACK_DELAY_S = float(os.environ.get("PQRAG_TEST_ACK_DELAY_S", "0") or 0)


class DocumentsServicer(Servicer, documents_pb2_grpc.DocumentsServicer):
    async def _ingest_batches(self, request_iterator) -> AsyncIterator[tuple[str, list[Document], int]]:
        """Read the request stream into batches of domain documents.

        A reader task fills a queue so a batch is whatever has arrived (at least one document): a
        client that waits for each acknowledgement before sending the next document never stalls.
        Yields (collection, documents, index of the first document in the stream). A bad document, a message
        that does not decode or the server draining ends the stream with that error after the documents before it
        were yielded (so stored and acknowledged): a stream's outcome is always "this prefix is stored".
        """
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * INGEST_BATCH)
        done = object()

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    await queue.put(req)
                await queue.put(done)
            except BaseException as exc:  # surfaced to the consumer
                await queue.put(exc)

        task = asyncio.ensure_future(reader())
        collection_name = ""
        position = 0
        try:
            finished, error = False, None
            while not finished:
                items = [await queue.get()]
                while len(items) < INGEST_BATCH and not queue.empty():
                    items.append(queue.get_nowait())
                batch = []
                for item in items:
                    if item is done or isinstance(item, BaseException):
                        finished, error = True, (item if item is not done else None)
                        break
                    try:
                        name = convert.stream_collection(item, collection_name, position + len(batch))
                        batch.append(convert.document_from_proto(item.document, position + len(batch)))
                    except PqragError as exc:
                        finished, error = True, exc
                        break
                    collection_name = name
                if batch:  # the documents before a bad one (or a failed read) are stored and acknowledged first
                    yield collection_name, batch, position
                    position += len(batch)
            if error is not None:
                raise error
        finally:
            task.cancel()

    async def _ingest(self, collection_name: str, batch: list[Document], position: int) -> list[IngestResult]:
        coll = await self.run(self.collections.get, collection_name)
        try:
            results = await self.run_bulk(coll.ingest, batch)
        except PqragError as exc:
            if not position:
                raise
            # Earlier batches were acknowledged and stay stored; say so, so the client resumes right.
            raise type(exc)(f"{exc} (the {position} documents before this batch are stored)") from exc
        self.metrics.ingested_documents.labels(collection_name).inc(len(results))
        self.metrics.ingested_chunks.labels(collection_name).inc(sum(r.chunk_count for r in results))
        return results

    @rpc("Ingest")
    async def Ingest(self, request_iterator, context):
        summary = documents_pb2.IngestSummary()
        try:
            async for name, batch, position in self._ingest_batches(request_iterator):
                summary.collection = name
                for r in await self._ingest(name, batch, position):
                    summary.document_count += 1
                    summary.chunk_count += r.chunk_count
                    summary.replaced_count += int(r.replaced)
                    summary.document_ids.append(r.doc_id)
        except PqragError as exc:  # a later document failed (or the server drains): say what is already stored
            if summary.document_count and "stored)" not in str(exc):
                raise type(exc)(f"{exc} (the first {summary.document_count} documents are stored)") from exc
            raise
        if not summary.collection:
            raise InvalidArgumentError("the stream held no documents: send at least one IngestRequest")
        return summary

    @rpc("IngestStream")
    async def IngestStream(self, request_iterator, context):
        async for name, batch, position in self._ingest_batches(request_iterator):
            results = await self._ingest(name, batch, position)
            if ACK_DELAY_S:
                await asyncio.sleep(ACK_DELAY_S)
            for i, r in enumerate(results):
                yield documents_pb2.IngestAck(
                    document_id=r.doc_id, chunk_count=r.chunk_count, replaced=r.replaced, index=position + i
                )

    @rpc("GetDocument")
    async def GetDocument(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.collection))
        doc_id = convert.require_document_id(request.document_id)
        doc = await self.run(coll.get_document, doc_id, include_chunks=request.include_chunks)
        return convert.document_to_proto(doc)

    @rpc("DeleteDocument")
    async def DeleteDocument(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.collection))
        await self.run(coll.delete_document, convert.require_document_id(request.document_id))
        return convert.EMPTY
