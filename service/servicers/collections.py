"""pqrag.v1.Collections: create, get, list (paged), update (AIP-134: a field mask) and delete collections."""

from __future__ import annotations

from pqrag.v1 import collections_pb2, collections_pb2_grpc
from service import convert
from service.auth import current_principal
from service.servicers.base import Servicer
from service.status import rpc


class CollectionsServicer(Servicer, collections_pb2_grpc.CollectionsServicer):
    @rpc("CreateCollection")
    async def CreateCollection(self, request, context):
        name, config = convert.collection_config_from_proto(request.collection)
        coll = await self.run(self.collections.create, name, config)
        return await self.run(convert.collection_to_proto, coll)

    @rpc("GetCollection")
    async def GetCollection(self, request, context):
        coll = await self.run(self.collections.get, convert.require_name(request.name))
        return await self.run(convert.collection_to_proto, coll)

    @rpc("ListCollections")
    async def ListCollections(self, request, context):
        # page_size 0 is unset in proto3: the domain's default page
        page, next_token = await self.run(self.collections.list_page, request.page_size or None, request.page_token)
        principal = current_principal()  # a key scoped to some collections sees only those (a page may come short)
        protos = [await self.run(convert.collection_to_proto, c) for c in page if principal.may_access(c.name)]
        return collections_pb2.ListCollectionsResponse(collections=protos, next_page_token=next_token)

    @rpc("UpdateCollection")
    async def UpdateCollection(self, request, context):
        name, settings = convert.collection_update_from_proto(request)
        if not request.update_mask.paths and convert.fixed_fields_set(request.collection):
            current = await self.run(convert.collection_to_proto, await self.run(self.collections.get, name))
            convert.check_fixed_fields(request.collection, current)  # only repeated, as GetCollection gave them
        coll = await self.run(self.collections.update, name, **settings)
        return await self.run(convert.collection_to_proto, coll)

    @rpc("DeleteCollection")
    async def DeleteCollection(self, request, context):
        await self.run(self.collections.delete, convert.require_name(request.name))
        return convert.EMPTY
