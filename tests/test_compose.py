"""docker-compose.yml against the Compose Specification schema, and every command it names against the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).resolve().parent / "fixtures" / "compose" / "compose_spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)  # raises with the offending path


def test_schema_check_can_fail(compose):
    bad = {**compose, "services": {**compose["services"], "server": {**compose["services"]["server"], "prots": []}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text())).validate(bad)


def test_services_profiles_and_gpu_reservation(compose):
    services = compose["services"]
    assert {"server", "ingest", "trainer"} <= set(services)
    assert services["trainer"]["profiles"] == ["train"]
    devices = services["server-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["server"]["healthcheck"]["test"][1:3] == ["pqrag", "health"]
    assert any(v.endswith(":/data") for v in services["server"]["volumes"])
    assert any(v.endswith(":/models") for v in services["server"]["volumes"])


def commands(compose):
    for name, svc in compose["services"].items():
        if "command" in svc:
            yield name, svc["command"]
        test = svc.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "pqrag"]:
            yield f"{name} healthcheck", test[2:]


def test_every_command_parses_with_the_cli(compose):
    parser = build_parser()
    seen = set()
    for _where, argv in commands(compose):
        args = parser.parse_args(argv)  # an unknown subcommand or flag exits (SystemExit fails the test)
        seen.add(args.command)
        if args.command == "train":
            from llm.train import build_arg_parser

            build_arg_parser().parse_args(args.train_args)
    assert seen >= {"serve", "ingest", "health", "train"}


def test_the_server_never_serves_openly(compose):
    """The server listens on 0.0.0.0 inside its container, so it registers an admin key from a Docker secret; the
    ingest job uses the same secret; /metrics (no auth) is published on the host's loopback only."""
    server = compose["services"]["server"]
    cmd = server["command"]
    key_file = cmd[cmd.index("--admin-key-file") + 1]
    assert "--insecure" not in cmd and key_file == "/run/secrets/pqrag_api_key"
    assert "pqrag_api_key" in server["secrets"] and "pqrag_api_key" in compose["secrets"]
    ingest = compose["services"]["ingest"]
    assert ingest["environment"]["PQRAG_API_KEY_FILE"] == key_file and "pqrag_api_key" in ingest["secrets"]
    metrics = [p for p in server["ports"] if p.endswith(":9464")]
    assert metrics == ["127.0.0.1:9464:9464"]
