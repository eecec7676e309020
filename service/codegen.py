"""Generate the Python gRPC stubs in pqrag/v1/ from proto/pqrag/v1/*.proto.

    python -m service.codegen            # rewrite the committed stubs (`make proto`)
    python -m service.codegen --check    # exit 1 when the committed stubs are stale

The stubs are committed so that a server needs no protoc at run time; grpcio-tools is pinned in the
dev extra because its output differs between versions.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path("pqrag") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir (laid out as pqrag/v1/...); returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out_dir / PACKAGE_DIR).glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of stubs that differ from (or are missing next to) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            committed = ROOT / PACKAGE_DIR / f.name
            if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                stale.append(f.name)
        fresh_names = {f.name for f in fresh}
        stale += [p.name for p in (ROOT / PACKAGE_DIR).glob("*_pb2*.py*") if p.name not in fresh_names]
        return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale gRPC stubs (run `make proto`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("gRPC stubs are up to date")
        return 0
    for old in (ROOT / PACKAGE_DIR).glob("*_pb2*.py*"):
        old.unlink()
    written = generate(ROOT)
    for f in written:
        print(f"wrote {f.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
