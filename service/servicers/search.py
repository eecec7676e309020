"""pqrag.v1.Search: nearest chunks to a text or a vector."""

from __future__ import annotations

from pqrag.v1 import search_pb2_grpc
from service import convert
from service.servicers.base import Servicer
from service.status import rpc


class SearchServicer(Servicer, search_pb2_grpc.SearchServicer):
    @rpc("Search")
    async def Search(self, request, context):
        name, query = convert.search_query_from_proto(request)
        coll = await self.run(self.collections.get, name)
        result = await self.run(coll.search, **query)
        self.metrics.embed_seconds.observe(result.embed_ms / 1e3)
        self.metrics.search_seconds.observe(result.search_ms / 1e3)
        return convert.search_result_to_proto(result)
