"""The HTTP front door, in the gRPC server's process and event loop, over the same collections and generator.

server.py              HttpServer: uvicorn driven inside the server's loop (start/stop with the gRPC server)
app.py                 create_app: the routes, the body limit (413), the HTTP metrics
context.py             HttpContext: collections, the AsyncLLM, the worker pool, metrics, the RAG pipeline
openai_routes.py       /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings (OpenAI-compatible)
schemas.py             their request bodies; the `rag` extension ({"collection", "top_k", "filter"})
generation.py          completions as events (Start with citations, Piece*, End) from the AsyncLLM or rag's pipeline
openai_format.py       OpenAI's response objects and chunks, logprobs, citations, server-sent events
streaming.py           whole answers and SSE streams; a client that disconnects aborts its request
embeddings.py          the collections' embedders as embedding models
collections_routes.py  REST: collections list/create/get/delete, search
documents_routes.py    REST: documents as JSON or uploaded files (PDF included), get, delete
service_routes.py      /health, /metrics, the console page at /
auth.py                the one authorization check of every route (Authorization: Bearer KEY)
errors.py              common.errors -> HTTP status, answered in OpenAI's error shape
console/               the web console: index.html, console.js, console.css (no build step, no CDN)
"""
