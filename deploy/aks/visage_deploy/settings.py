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
# Who signs the tokens people and the demo loader use: Microsoft Entra ID (VISAGE_AUTH_* name the app),
# or the local issuer, whose one Ed25519 key the deploy generates once into Key Vault.
IDENTITY_MODES = ("local", "entra")
ENTRA_REQUIRED = ("VISAGE_AUTH_ISSUER", "VISAGE_AUTH_AUDIENCE", "VISAGE_AUTH_JWKS_URL")
# Where the gateway's certificate comes from: Key Vault makes and signs it itself (self-signed policy),
# an ACME CA Key Vault is integrated with, or the operator's own PEM (certificate + key) imported by the deploy.
CERTIFICATE_SOURCES = ("self-signed", "acme", "file")


AUTH_ENV_NAMES = ("VISAGE_AUTH_ISSUER", "VISAGE_AUTH_AUDIENCE", "VISAGE_AUTH_JWKS_URL", "VISAGE_AUTH_ROLE_CLAIM",
                  "VISAGE_AUTH_SUBJECT_CLAIM", "VISAGE_GATEWAY_HOSTNAMES")
# The UI's sign-in with the organisation's OpenID Connect provider (README "Roles and sign-in"): the
# gateway serves them to the page; the redirect URI to register is https://<public name>/.
UI_ENV_NAMES = ("VISAGE_UI_OIDC_CLIENT_ID", "VISAGE_UI_OIDC_AUTHORITY", "VISAGE_UI_OIDC_SCOPES",
                "VISAGE_UI_OIDC_PROVIDER_NAME")
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
    gateway_probe_port: int | None = None       # tests: the https port the load balancer answers on
    gateway_redirect_probe_port: int | None = None  # tests: its plain-http port (the redirect)
    gateway_probe_address: str | None = None    # tests: where the public name would resolve to
    rollout_timeout: float = 900.0
    # The public address: a static IP with this DNS label (<label>.<location>.cloudapp.azure.com) or,
    # when `hostname` is set, the operator's own name (its DNS A record points at the static IP).
    dns_label: str = ""                         # "" = derived: <cluster>-<suffix>
    hostname: str = ""
    certificate: str = "self-signed"            # one of CERTIFICATE_SOURCES
    certificate_file: Path | None = None        # "file": PEM with the certificate chain and its key
    acme_issuer: str = ""                       # "acme": the Key Vault certificate issuer's name
    identity: str = ""                          # one of IDENTITY_MODES; "" = entra if VISAGE_AUTH_* set
    vault_endpoint: str = ""                    # tests: the Key Vault data plane (else the vault's vaultUri)
    purge_deleted_vault: bool = False           # a soft-deleted vault of this name: purge it (else recover)
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

    @property
    def public_ip(self) -> str:
        return f"{self.cluster}-gateway-ip"

    @property
    def dns_label_name(self) -> str:   # unique within the region: lower case, 3-63 characters
        return (self.dns_label or f"{self.cluster}-{self._suffix()}").lower()

    @property
    def azure_fqdn(self) -> str:
        return f"{self.dns_label_name}.{self.location}.cloudapp.azure.com"

    @property
    def public_hostname(self) -> str:
        """The name people type: the operator's own, else the static IP's Azure DNS name."""
        return self.hostname.lower() or self.azure_fqdn

    @property
    def identity_mode(self) -> str:
        if self.identity:
            return self.identity
        return "entra" if any(name in self.cassandra_env for name in ENTRA_REQUIRED) else "local"

    def validate(self) -> None:
        """Every setting checked before anything is created: a mistake costs no Azure resources."""
        self._validate_identity()
        self._validate_address()
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

    def _validate_identity(self) -> None:
        """Without one issuer every pod would make its own key and no token would work anywhere."""
        if self.identity_mode not in IDENTITY_MODES:
            raise DeployError(f"unknown identity {self.identity_mode!r}: VISAGE_AZ_IDENTITY is one of "
                              f"{', '.join(IDENTITY_MODES)}")
        given = [name for name in ENTRA_REQUIRED if self.cassandra_env.get(name)]
        if self.identity_mode == "entra" and len(given) < len(ENTRA_REQUIRED):
            missing = ", ".join(name for name in ENTRA_REQUIRED if name not in given)
            raise DeployError(f"no usable token issuer: Entra ID needs {', '.join(ENTRA_REQUIRED)} (missing: {missing}); "
                              "or set VISAGE_AZ_IDENTITY=local (and no VISAGE_AUTH_*) for the local issuer, whose "
                              "one key the deploy keeps in Key Vault")
        if self.identity_mode == "local" and given:
            raise DeployError(f"VISAGE_AZ_IDENTITY=local but {', '.join(given)} set: the local issuer signs its own "
                              "tokens; unset them, or use VISAGE_AZ_IDENTITY=entra")

    def _validate_address(self) -> None:
        if self.certificate not in CERTIFICATE_SOURCES:
            raise DeployError(f"unknown certificate source {self.certificate!r}: VISAGE_AZ_CERTIFICATE is one of "
                              f"{', '.join(CERTIFICATE_SOURCES)}")
        if self.certificate == "file" and (self.certificate_file is None or not self.certificate_file.is_file()):
            raise DeployError("VISAGE_AZ_CERTIFICATE=file needs VISAGE_AZ_CERTIFICATE_FILE: a PEM file with the "
                              "certificate chain and its private key")
        if self.certificate == "acme" and not (self.acme_issuer and self.hostname):
            raise DeployError("VISAGE_AZ_CERTIFICATE=acme needs VISAGE_AZ_ACME_ISSUER (the Key Vault certificate "
                              "issuer) and VISAGE_AZ_HOSTNAME (your domain: a CA does not sign cloudapp.azure.com)")
        label = self.dns_label_name
        if not (3 <= len(label) <= 63 and label[0].isalpha() and all(c.isalnum() or c == "-" for c in label)):
            raise DeployError(f"DNS label {label!r}: 3-63 letters, digits or '-', starting with a letter "
                              "(VISAGE_AZ_DNS_LABEL)")
        if len(self.public_hostname) > 64:  # the certificate's CN holds at most 64 characters
            raise DeployError(f"the public name {self.public_hostname} is longer than a certificate's 64-character "
                              "common name: use a shorter VISAGE_AZ_DNS_LABEL or VISAGE_AZ_HOSTNAME")

    @classmethod
    def from_env(cls, overlay: str | None = None) -> "DeploySettings":
        overlay = overlay or _env("VISAGE_AZ_OVERLAY", "dev")
        if overlay not in OVERLAYS:
            raise ValueError(f"unknown overlay {overlay!r}; choose one of {', '.join(OVERLAYS)}")
        faces = _env("VISAGE_FACES_DIR") or str(REPO.parent / "shared" / "data" / "faces")
        secret_names = ("VISAGE_CASSANDRA_USERNAME", "VISAGE_CASSANDRA_PASSWORD", "VISAGE_AZURE_FACE_KEY")
        cassandra_names = ("VISAGE_CASSANDRA_HOSTS", "VISAGE_CASSANDRA_PORT", "VISAGE_CASSANDRA_TLS",
                           "VISAGE_CASSANDRA_KEYSPACE", "VISAGE_CASSANDRA_REPLICATION",
                           "VISAGE_CASSANDRA_LOCAL_DC", "VISAGE_CASSANDRA_BACKEND",
                           "VISAGE_CASSANDRA_ERASED_GRACE_SECONDS", "VISAGE_AZURE_FACE_ENDPOINT",
                           # Identity (README "Roles and sign-in"): the Entra ID app the tokens are for, and
                           # the gateway's public host names; they go to the visage-config ConfigMap.
                           *AUTH_ENV_NAMES, *UI_ENV_NAMES, *TRACING_ENV_NAMES)
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
            dns_label=_env("VISAGE_AZ_DNS_LABEL"),
            hostname=_env("VISAGE_AZ_HOSTNAME"),
            certificate=_env("VISAGE_AZ_CERTIFICATE", cls.certificate),
            certificate_file=Path(_env("VISAGE_AZ_CERTIFICATE_FILE")) if _env("VISAGE_AZ_CERTIFICATE_FILE") else None,
            acme_issuer=_env("VISAGE_AZ_ACME_ISSUER"),
            identity=_env("VISAGE_AZ_IDENTITY"),
            purge_deleted_vault=_env("VISAGE_AZ_PURGE_DELETED_VAULT") == "1",
            secret_env={name: os.environ[name] for name in secret_names if os.environ.get(name)},
            cassandra_env={name: os.environ[name] for name in cassandra_names if os.environ.get(name)},
        )
