"""The fuzz suite's stack: the four real services in-process on free ports (one
SQLite store, one face worker), a little real data so generated ids sometimes
hit, and the real Envoy in front (per-caller rate limit off: the fuzzer is one
caller and should reach the services)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.config import Config
from visage.mesh import start_in_process
from visage.store import open_store
from visage.v1 import query_pb2, query_pb2_grpc, resources_pb2
from visage_trainer.training import TrainerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_stack import Gateway, Mesh, start_gateway  # noqa: E402

from fuzz_generators import seed_images  # noqa: E402



@dataclass
class FuzzStack:
    mesh: Mesh
    gateway: Gateway
    ids: list[str]          # real persona, image and face ids
    images: list[bytes]     # seed images for mutation

    def assert_all_healthy(self) -> None:
        for name, port in self.mesh.ports.items():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        status, _, _ = self.gateway.request("GET", "/healthz", timeout=30)
        assert status == 200
        assert self.gateway.process.poll() is None, "Envoy's supervisor exited"


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory, faces_dir) -> FuzzStack:
    config = Config(data_dir=tmp_path_factory.mktemp("fuzz-data"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    settings = TrainerSettings(debounce_seconds=1.0, poll_seconds=0.1)
    with start_in_process(config, store, trainer_settings=settings) as services:
        mesh = Mesh(config, store, services.ports)
        photos = sorted(faces_dir.glob("bbt/penny/*.png"))[:2] + [faces_dir / "scenes" / "two_people.jpg"]
        face_ids = [face for faces in mesh.ingest_files(photos).values() for face in faces]
        with grpc.insecure_channel(f"127.0.0.1:{services.ports['query']}") as channel:
            persona = query_pb2_grpc.QueryServiceStub(channel).CreatePersona(
                query_pb2.CreatePersonaRequest(persona=resources_pb2.Persona(display_name="Fuzzy")), timeout=30)
        image_ids = [image.image_id for image in store.list_images(0, 10)]
        gateway = start_gateway(services.ports, tmp_path_factory.mktemp("fuzz-gateway"),
                                {"VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND": "0", "VISAGE_GATEWAY_ACCESS_LOG": "0"})
        try:
            yield FuzzStack(mesh, gateway, [persona.persona_id, *face_ids, *image_ids], seed_images(faces_dir))
        finally:
            gateway.stop()
    store.close()
