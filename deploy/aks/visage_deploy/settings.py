"""What to deploy where: every knob comes from the environment (VISAGE_AZ_*),
so `make deploy` needs no flags and CI can set the same variables."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from visage_deploy.errors import DeployError

REPO = Path(__file__).resolve().parents[3]
AKS_DIR = REPO / "deploy" / "aks"
OVERLAYS = ("dev", "prod")
SERVICES = ("ingest", "trainer", "classifier", "query", "gateway")
# The demo-data loader image is built FROM the ingest image, so it comes last.
IMAGES = (*SERVICES, "loader")
# Where the Cassandra comes from: an Apache Cassandra StatefulSet in the cluster (dev only),
# Azure Cosmos DB for Apache Cassandra made by the deploy, or an endpoint given by config
# (e.g. Azure Managed Instance for Apache Cassandra, which needs VNet peering: see README).
STORES = ("in-cluster", "cosmos", "external")
COSMOS_CASSANDRA_PORT = 10350
CASSANDRA_PORT = 9042     # Apache Cassandra and Managed Instance


AUTH_ENV_NAMES = ("VISAGE_AUTH_ISSUER", "VISAGE_AUTH_AUDIENCE", "VISAGE_AUTH_JWKS_URL", "VISAGE_AUTH_ROLE_CLAIM",
                  "VISAGE_AUTH_SUBJECT_CLAIM", "VISAGE_GATEWAY_HOSTNAMES")
# Traces (README "Tracing"), optional: set, the services and the gateway export OTLP to that
# collector; unset, tracing stays off. Headers (API keys) are left out on purpose: point the
# pods at a collector in the cluster that holds the backend's credentials itself.
TRACING_ENV_NAMES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_INSECURE",
                     "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES")


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
    node_vm_size: str = "Standard_D4s_v5"      # the user pool: Visage's pods
    node_count: int = 2                         # user pool autoscaler minimum
    node_max_count: int = 5
    system_vm_size: str = "Standard_D2s_v5"    # the system pool: CoreDNS, CSI drivers, metrics
    system_node_count: int = 1
    zones: tuple[str, ...] = ("1", "2", "3")   # empty in regions without availability zones
    upgrade_channel: str = "patch"
    store: str = ""                             # one of STORES; "" = in-cluster for dev, cosmos for prod
    cosmos_throughput: int = 0                  # 0 = serverless; else provisioned RU/s (autoscale max)
    cassandra_ca_file: Path | None = None       # PEM for a TLS endpoint with a private CA
    skip_image_build: bool = False              # images pushed by `docker build` + `docker push` instead
    overlay: str = "dev"
    namespace: str = "visage"
    # ARM endpoint and LRO poll interval; tests point these at a local server.
    arm_endpoint: str = "https://management.azure.com"
    poll_seconds: float = 10.0
    connection_verify: str | bool = True
    kustomize: Path = REPO / ".tools" / "bin" / "kustomize"
    faces_dir: Path | None = None
    gateway_probe_port: int | None = None       # tests: the port the load balancer answers on
    rollout_timeout: float = 900.0
    # Values for the in-cluster Secret / ConfigMap (never written to git).
    secret_env: dict[str, str] = field(default_factory=dict)
    cassandra_env: dict[str, str] = field(default_factory=dict)

    @property
    def deployment_id(self) -> str:
        return f"{self.resource_group}/{self.cluster}"

    @property
    def tags(self) -> dict[str, str]:
        """On everything the deploy creates; undeploy deletes only resources carrying this deployment's id."""
        return {"app": "visage", "managed-by": "visage-deploy", "overlay": self.overlay,
                "visage-deployment": self.deployment_id}

    @property
    def store_kind(self) -> str:
        if self.store:
            return self.store
        if "VISAGE_CASSANDRA_HOSTS" in self.cassandra_env:
            return "external"
        return "cosmos" if self.overlay == "prod" else "in-cluster"

    def _suffix(self) -> str:
        return hashlib.sha256(f"{self.subscription_id}/{self.deployment_id}".encode()).hexdigest()[:6]

    @property
    def cosmos_account(self) -> str:   # global DNS name: lower case, 3-44 characters
        return f"{self.cluster}-{self._suffix()}"[:44].lower()

    @property
    def key_vault(self) -> str:        # global DNS name: 3-24 characters
        return f"{self.cluster[:14]}-kv-{self._suffix()}".lower()

    @property
    def keyspace(self) -> str:
        return self.cassandra_env.get("VISAGE_CASSANDRA_KEYSPACE", "visage")

    @property
    def workload_identity(self) -> str:
        return f"{self.cluster}-workload"

    def validate(self) -> None:
        """Every setting checked before anything is created: a mistake costs no Azure resources."""
        if self.store_kind not in STORES:
            raise DeployError(f"unknown store {self.store_kind!r}: VISAGE_AZ_STORE is one of {', '.join(STORES)}")
        if self.overlay == "prod" and self.store_kind == "in-cluster":
            raise DeployError("the prod overlay has no in-cluster Cassandra: use VISAGE_AZ_STORE=cosmos (made by the "
                              "deploy) or external (set VISAGE_CASSANDRA_HOSTS to your Managed Instance)")
        if self.store_kind == "external":
            if "VISAGE_CASSANDRA_HOSTS" not in self.cassandra_env:
                raise DeployError("VISAGE_AZ_STORE=external needs the Cassandra's address: set VISAGE_CASSANDRA_HOSTS "
                                  "(and VISAGE_CASSANDRA_USERNAME / VISAGE_CASSANDRA_PASSWORD)")
            if self.overlay == "prod" and not {"VISAGE_CASSANDRA_USERNAME", "VISAGE_CASSANDRA_PASSWORD"} <= set(self.secret_env):
                raise DeployError("the prod overlay's external Cassandra needs VISAGE_CASSANDRA_USERNAME and "
                                  "VISAGE_CASSANDRA_PASSWORD (they go to Key Vault, never into git)")
        if self.cassandra_ca_file is not None and not self.cassandra_ca_file.is_file():
            raise DeployError(f"VISAGE_CASSANDRA_TLS_CA_FILE {self.cassandra_ca_file} does not exist")
        if self.cosmos_throughput and self.cosmos_throughput < 1000:
            raise DeployError("VISAGE_AZ_COSMOS_THROUGHPUT is the autoscale maximum in RU/s: 1000 or more (0 = serverless)")
        if self.node_count > self.node_max_count:
            raise DeployError(f"VISAGE_AZ_NODE_COUNT ({self.node_count}) exceeds VISAGE_AZ_NODE_MAX_COUNT ({self.node_max_count})")

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
                           *AUTH_ENV_NAMES, *TRACING_ENV_NAMES)
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
            system_vm_size=_env("VISAGE_AZ_SYSTEM_VM_SIZE", cls.system_vm_size),
            system_node_count=int(_env("VISAGE_AZ_SYSTEM_NODE_COUNT", str(cls.system_node_count))),
            zones=tuple(zone for zone in _env("VISAGE_AZ_ZONES", ",".join(cls.zones)).split(",") if zone),
            upgrade_channel=_env("VISAGE_AZ_UPGRADE_CHANNEL", cls.upgrade_channel),
            store=_env("VISAGE_AZ_STORE"),
            cosmos_throughput=int(_env("VISAGE_AZ_COSMOS_THROUGHPUT", "0")),
            cassandra_ca_file=Path(_env("VISAGE_CASSANDRA_TLS_CA_FILE")) if _env("VISAGE_CASSANDRA_TLS_CA_FILE") else None,
            skip_image_build=_env("VISAGE_AZ_SKIP_IMAGE_BUILD") == "1",
            overlay=overlay,
            arm_endpoint=_env("VISAGE_AZ_ARM_ENDPOINT", cls.arm_endpoint),
            poll_seconds=float(_env("VISAGE_AZ_POLL_SECONDS", str(cls.poll_seconds))),
            kustomize=Path(_env("KUSTOMIZE", str(cls.kustomize))),
            faces_dir=Path(faces) if Path(faces).is_dir() else None,
            secret_env={name: os.environ[name] for name in secret_names if os.environ.get(name)},
            cassandra_env={name: os.environ[name] for name in cassandra_names if os.environ.get(name)},
        )
