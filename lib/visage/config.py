"""Configuration from environment variables (VISAGE_*), with embedded defaults
that run the whole mesh on one machine. Kubernetes sets the same variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VISAGE_{name}", default)


@dataclass(frozen=True)
class CassandraConfig:
    contact_points: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "visage"
    # CQL replication map, e.g. "{'class': 'NetworkTopologyStrategy', 'dc1': 3}".
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    username: str = ""
    password: str = ""
    # Cosmos DB Cassandra API and Managed Instance require TLS (port 10350 on Cosmos).
    tls: bool = False
    tls_ca_file: str = ""
    local_dc: str = ""
    # Bounds opening a connection and the driver's own setup queries (topology, schema).
    # Production's default; tests on a loaded machine set a long one.
    connect_timeout_seconds: float = 10.0

    @classmethod
    def from_env(cls) -> "CassandraConfig":
        return cls(
            contact_points=tuple(_env("CASSANDRA_HOSTS", "127.0.0.1").split(",")),
            port=int(_env("CASSANDRA_PORT", "9042")),
            keyspace=_env("CASSANDRA_KEYSPACE", "visage"),
            replication=_env("CASSANDRA_REPLICATION", cls.replication),
            username=_env("CASSANDRA_USERNAME", ""),
            password=_env("CASSANDRA_PASSWORD", ""),
            tls=_env("CASSANDRA_TLS", "false").lower() in ("1", "true", "yes"),
            tls_ca_file=_env("CASSANDRA_TLS_CA_FILE", ""),
            local_dc=_env("CASSANDRA_LOCAL_DC", ""),
            connect_timeout_seconds=float(_env("CASSANDRA_CONNECT_TIMEOUT_SECONDS", "10")),
        )


@dataclass(frozen=True)
class Ports:
    """gRPC ports of the services and the gateway's HTTP port (all on one host by default)."""
    ingest: int = 50051
    classifier: int = 50052
    trainer: int = 50053
    query: int = 50054
    gateway: int = 8080

    @classmethod
    def from_env(cls) -> "Ports":
        return cls(*(int(_env(f"{name.upper()}_PORT", str(getattr(cls, name))))
                     for name in ("ingest", "classifier", "trainer", "query", "gateway")))


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    store: str = "sqlite"  # or "cassandra"
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"  # address services bind to and call each other on
    max_image_bytes: int = 20 * 1024 * 1024
    workers: int = 0  # face-pipeline worker processes; 0 = one per core
    event_retention_days: float = 30.0  # older events are compacted away (privacy: keep no more than needed)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "visage.db"

    @classmethod
    def from_env(cls) -> "Config":
        return cls(
            data_dir=Path(_env("DATA_DIR", "data")),
            store=_env("STORE", "sqlite"),
            cassandra=CassandraConfig.from_env(),
            ports=Ports.from_env(),
            host=_env("HOST", "127.0.0.1"),
            max_image_bytes=int(_env("MAX_IMAGE_BYTES", str(20 * 1024 * 1024))),
            workers=int(_env("WORKERS", "0")),
            event_retention_days=float(_env("EVENT_RETENTION_DAYS", "30")),
        )
