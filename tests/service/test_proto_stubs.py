"""The committed gRPC stubs match what `make proto` generates from proto/."""

from service import codegen


def test_stubs_are_up_to_date():
    stale = codegen.stale_files()
    assert stale == [], f"stale gRPC stubs, run `make proto`: {stale}"


def test_every_proto_is_generated():
    names = {p.stem for p in codegen.proto_files()}
    assert names >= {"collections", "documents", "search"}
    for name in names:
        assert (codegen.ROOT / codegen.PACKAGE_DIR / f"{name}_pb2.py").exists()
        assert (codegen.ROOT / codegen.PACKAGE_DIR / f"{name}_pb2_grpc.py").exists()
