"""The OpenAPI document of the REST API, generated from the protos' HTTP rules
by gnostic's protoc-gen-openapi (installed into .tools/bin by `make openapi`)
and converted to JSON. Never written by hand.

    python -m visage_gateway.openapi [OUT.json]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / ".tools/bin/protoc-gen-openapi"
PROTO_ROOT = REPO / "protos"
THIRD_PARTY = REPO / "build/third_party"  # google/api/*.proto, copied by `make gen`
DEFAULT_OUT = REPO / "build/openapi.json"
DESCRIPTOR_SET = REPO / "build/visage.pb"


class OpenApiUnavailable(RuntimeError):
    """The generator or its inputs are missing (run `make openapi`)."""


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out: Path = DEFAULT_OUT, plugin: Path = PLUGIN) -> Path:
    """Runs protoc-gen-openapi over every proto and writes `out` as JSON."""
    if not plugin.is_file():
        raise OpenApiUnavailable(f"{plugin} is missing: run `make openapi`")
    if not (THIRD_PARTY / "google/api/annotations.proto").is_file():
        raise OpenApiUnavailable(f"{THIRD_PARTY} is missing: run `make gen`")
    files = proto_files()
    # The protos carry no go_package; the plugin insists on one, so map each to a dummy.
    go_packages = [f"--openapi_opt=M{f}=visage/v1" for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{THIRD_PARTY}",
                   f"--plugin=protoc-gen-openapi={plugin}", f"--openapi_out={tmp}",
                   "--openapi_opt=title=Visage API", "--openapi_opt=version=v1",
                   "--openapi_opt=enum_type=string", "--openapi_opt=default_response=true",
                   *go_packages, *files]
        result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"protoc-gen-openapi failed: {result.stderr.strip()}")
        document = yaml.safe_load((Path(tmp) / "openapi.yaml").read_text())
    mark_server_streams(document)
    mark_security(document)
    document["info"]["description"] = (
        "REST/JSON view of the Visage gRPC services, transcoded by the Envoy gateway. "
        "Streaming methods (e.g. GET /v1/events:watch) answer as server-sent events.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    return out


def server_streaming_operations() -> set[str]:
    """operationIds (Service_Method) of server-streaming RPCs, from the descriptor set."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    return {f"{service.name}_{method.name}" for file in files.file for service in file.service
            for method in service.method if method.server_streaming}


def mark_security(document: dict) -> None:
    """Every operation needs a bearer JWT; each says the least role it needs
    (visage.auth.roles, the table the gateway and the services enforce)."""
    from visage.auth.roles import least_role

    document.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "`visage token create --role ROLE` (local issuer) or your OIDC issuer's access token"}
    document["security"] = [{"bearer": []}]
    for operations in document["paths"].values():
        for operation in operations.values():
            service, _, method = operation.get("operationId", "").partition("_")
            role = least_role(f"/visage.v1.{service}/{method}").label
            operation["x-visage-role"] = role
            operation["description"] = f"{operation.get('description', '')}\n\nNeeds the `{role}` role.".strip()


def mark_server_streams(document: dict) -> None:
    """The gateway answers server-streaming RPCs as server-sent events, one
    `data: {json}` per message; the plugin knows nothing of that."""
    streams = server_streaming_operations()
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("operationId") in streams:
                ok = operation["responses"]["200"]
                ok["description"] = "Server-sent events: one `data:` line per message of the stream."
                ok["content"] = {"text/event-stream": ok["content"]["application/json"]}


def is_stale(out: Path = DEFAULT_OUT) -> bool:
    if not out.is_file():
        return True
    newest_proto = max(p.stat().st_mtime for p in PROTO_ROOT.rglob("*.proto"))
    return out.stat().st_mtime < newest_proto


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    print(generate(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
