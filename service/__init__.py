"""The service: gRPC in and out of the domain (retrieval, rag), status codes at the edge, the CLI and the client.

server.py      create_server(ServerConfig) -> Server (grpc server, port, collections, generator; stop()), serve()
config.py      ServerConfig: what `pqrag serve` configures (engine options left out keep the engine's defaults)
servicers/     one module per service of proto/pqrag/v1: proto -> domain call -> proto, nothing else
convert.py     pure proto <-> domain functions (unset fields are left to the domain's defaults)
status.py      common.errors class -> status code, in one table; anything else INTERNAL, logged
metrics.py     Prometheus metrics of the RPCs, the generation and the engine
client.py      the synchronous Python client (CLI, demo, tests, benchmarks)
cli.py         the `pqrag` command line; demo.py (`make demo`), launcher.py (a server subprocess)
codegen.py     the committed stubs in pqrag/v1 from proto/ (`make proto`); structs.py: Struct <-> dict
gate.py        what every request passes first: auth.py (API keys, roles, scopes), interceptors.py (the gRPC
               interceptor: keys, decoding, scopes, audit), ratelimit.py, admission.py, audit.py; tls.py; health.py
keys_cli.py    `pqrag keys`; cli_options.py: the security and backpressure flags of serve and the clients
"""
