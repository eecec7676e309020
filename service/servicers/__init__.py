"""The gRPC servicers, one module per service of proto/pqrag/v1: each method translates the request (service.convert),
calls the domain (retrieval's Collections, rag's RagPipeline) and translates the answer back. Errors leave through
service.status.rpc; blocking domain work runs in the server's worker pool (Servicer.run)."""
