"""pqrag.v1.Documents: streamed ingestion (a summary at the end, or one acknowledgement per durable document),
lookup and deletion."""

from __future__ import annotations

import asyncio
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


class DocumentsServicer(Servicer, documents_pb2_grpc.DocumentsServicer):
    async def _ingest_batches(self, request_iterator) -> AsyncIterator[tuple[str, list[Document], int]]:
        """Read the request stream into batches of domain documents.

        A reader task fills a queue so a batch is whatever has arrived (at least one document): a
        client that waits for each acknowledgement before sending the next document never stalls.
        Yields (collection, documents, index of the first document in the stream).
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
            finished = False
            while not finished:
                items = [await queue.get()]
                while len(items) < INGEST_BATCH and not queue.empty():
                    items.append(queue.get_nowait())
                batch = []
                for item in items:
                    if item is done:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    collection_name = convert.stream_collection(item, collection_name, position + len(batch))
                    batch.append(convert.document_from_proto(item.document, position + len(batch)))
                if batch:
                    yield collection_name, batch, position
                    position += len(batch)
        finally:
            task.cancel()

    async def _ingest(self, collection_name: str, batch: list[Document], position: int) -> list[IngestResult]:
        coll = await self.run(self.collections.get, collection_name)
        try:
            results = await self.run(coll.ingest, batch)
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
        async for name, batch, position in self._ingest_batches(request_iterator):
            summary.collection = name
            for r in await self._ingest(name, batch, position):
                summary.document_count += 1
                summary.chunk_count += r.chunk_count
                summary.replaced_count += int(r.replaced)
                summary.document_ids.append(r.doc_id)
        if not summary.collection:
            raise InvalidArgumentError("the stream held no documents: send at least one IngestRequest")
        return summary

    @rpc("IngestStream")
    async def IngestStream(self, request_iterator, context):
        async for name, batch, position in self._ingest_batches(request_iterator):
            for i, r in enumerate(await self._ingest(name, batch, position)):
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
