"""Generated protobuf and gRPC stubs for the pqrag API (package pqrag.v1); regenerate with `make proto`."""
