"""What to deploy where: every knob comes from the environment (VISAGE_AZ_*),
so `make deploy` needs no flags and CI can set the same variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
AKS_DIR = REPO / "deploy" / "aks"
OVERLAYS = ("dev", "prod")
SERVICES = ("ingest", "trainer", "classifier", "query", "gateway")
# The demo-data loader image is built FROM the ingest image, so it comes last.
IMAGES = (*SERVICES, "loader")


AUTH_ENV_NAMES = ("VISAGE_AUTH_ISSUER", "VISAGE_AUTH_AUDIENCE", "VISAGE_AUTH_JWKS_URL", "VISAGE_AUTH_ROLE_CLAIM",
                  "VISAGE_AUTH_SUBJECT_CLAIM", "VISAGE_GATEWAY_HOSTNAMES")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class DeploySettings:
    subscription_id: str = ""
    location: str = "westeurope"
    resource_group: str = "visage-rg"
    cluster: str = "visage-aks"
    registry: str = "visageacr"          # ACR names are global: set VISAGE_AZ_REGISTRY to your own
    registry_sku: str = "Basic"
    node_vm_size: str = "Standard_D4s_v5"
    node_count: int = 2
    node_max_count: int = 5
    overlay: str = "dev"
    namespace: str = "visage"
    # ARM endpoint and LRO poll interval; tests point these at a local server.
    arm_endpoint: str = "https://management.azure.com"
    poll_seconds: float = 10.0
    connection_verify: str | bool = True
    kustomize: Path = REPO / ".tools" / "bin" / "kustomize"
    faces_dir: Path | None = None
    # Values for the in-cluster Secret / ConfigMap (never written to git).
    secret_env: dict[str, str] = field(default_factory=dict)
    cassandra_env: dict[str, str] = field(default_factory=dict)

    @property
    def tags(self) -> dict[str, str]:
        return {"app": "visage", "managed-by": "visage-deploy", "overlay": self.overlay}

    @classmethod
    def from_env(cls, overlay: str | None = None) -> "DeploySettings":
        overlay = overlay or _env("VISAGE_AZ_OVERLAY", "dev")
        if overlay not in OVERLAYS:
            raise ValueError(f"unknown overlay {overlay!r}; choose one of {', '.join(OVERLAYS)}")
        faces = _env("VISAGE_FACES_DIR") or str(REPO.parent / "shared" / "data" / "faces")
        secret_names = ("VISAGE_CASSANDRA_USERNAME", "VISAGE_CASSANDRA_PASSWORD", "VISAGE_AZURE_FACE_KEY")
        cassandra_names = ("VISAGE_CASSANDRA_HOSTS", "VISAGE_CASSANDRA_PORT", "VISAGE_CASSANDRA_TLS",
                           "VISAGE_CASSANDRA_KEYSPACE", "VISAGE_CASSANDRA_REPLICATION",
                           "VISAGE_CASSANDRA_LOCAL_DC", "VISAGE_AZURE_FACE_ENDPOINT",
                           # Identity (README "Roles and sign-in"): the Entra ID app the tokens are for, and
                           # the gateway's public host names; they go to the visage-config ConfigMap.
                           *AUTH_ENV_NAMES)
        return cls(
            subscription_id=_env("AZURE_SUBSCRIPTION_ID"),
            location=_env("VISAGE_AZ_LOCATION", cls.location),
            resource_group=_env("VISAGE_AZ_RESOURCE_GROUP", cls.resource_group),
            cluster=_env("VISAGE_AZ_CLUSTER", cls.cluster),
            registry=_env("VISAGE_AZ_REGISTRY", cls.registry),
            registry_sku=_env("VISAGE_AZ_REGISTRY_SKU", cls.registry_sku),
            node_vm_size=_env("VISAGE_AZ_NODE_VM_SIZE", cls.node_vm_size),
            node_count=int(_env("VISAGE_AZ_NODE_COUNT", str(cls.node_count))),
            node_max_count=int(_env("VISAGE_AZ_NODE_MAX_COUNT", str(cls.node_max_count))),
            overlay=overlay,
            arm_endpoint=_env("VISAGE_AZ_ARM_ENDPOINT", cls.arm_endpoint),
            poll_seconds=float(_env("VISAGE_AZ_POLL_SECONDS", str(cls.poll_seconds))),
            kustomize=Path(_env("KUSTOMIZE", str(cls.kustomize))),
            faces_dir=Path(faces) if Path(faces).is_dir() else None,
            secret_env={name: os.environ[name] for name in secret_names if os.environ.get(name)},
            cassandra_env={name: os.environ[name] for name in cassandra_names if os.environ.get(name)},
        )
