"""The API is defined once, in protobuf: these tests keep the contract honest."""
from __future__ import annotations

import subprocess
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from visage.server import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
# RPCs that are gRPC-only by design: client/bidi streaming cannot be transcoded to REST, and
# DeletePersona answers Empty for older gRPC clients (REST's DELETE is ErasePersona, which
# answers the erased ids).
GRPC_ONLY = {"IngestImages", "ClassifyEmbeddings", "ClassifyStream", "DeletePersona"}


def load_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString((REPO / "build/visage.pb").read_bytes())


def visage_services(fds: descriptor_pb2.FileDescriptorSet):
    for file in fds.file:
        if file.package == "visage.v1":
            yield from file.service


def test_four_services_in_one_package():
    names = {f"visage.v1.{s.name}" for s in visage_services(load_descriptor_set())}
    assert names == set(SERVICE_NAMES.values())


def test_every_rpc_the_ui_needs_is_reachable_over_rest():
    missing = []
    for service in visage_services(load_descriptor_set()):
        for method in service.method:
            rule = method.options.Extensions[annotations_pb2.http]
            if method.name not in GRPC_ONLY and not rule.WhichOneof("pattern"):
                missing.append(f"{service.name}.{method.name}")
    assert missing == []


def test_every_rpc_and_message_is_documented():
    undocumented = []
    for file in load_descriptor_set().file:
        if file.package != "visage.v1":
            continue
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for index, message in enumerate(file.message_type):
            if not comments.get((4, index), "").strip():
                undocumented.append(message.name)
    assert undocumented == []


def test_generated_code_is_not_committed():
    tracked = subprocess.run(["git", "ls-files", "lib/visage/v1", "build"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    assert tracked == ""
