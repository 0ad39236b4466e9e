"""`python -m visage_query` as the mesh runs it: health, reflection, a real
call, and a prompt clean exit on SIGTERM even with a WatchEvents stream open."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from visage.mesh import wait_serving
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage.loopback import free_port


def test_module_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_QUERY_PORT": str(port)}
    log = open(tmp_path / "query.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "visage_query"], env=env, stderr=log)
    try:
        address = f"127.0.0.1:{port}"
        wait_serving(address, timeout=60)
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="visage.v1.QueryService"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            services = {service.name for service in next(reflection).list_services_response.service}
            assert "visage.v1.QueryService" in services

            stub = query_pb2_grpc.QueryServiceStub(channel)
            stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Amy")), timeout=5)
            watch = stub.WatchEvents(query_pb2.WatchEventsRequest(), timeout=60)
            watch.initial_metadata()
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            assert time.monotonic() - began < 10  # the open stream did not hold the 20 s grace
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
