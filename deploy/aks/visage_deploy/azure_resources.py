"""Resource group, container registry, AKS cluster, the gateway's static public IP with its DNS
name, Key Vault (the store's credentials, the local issuer's key, the TLS certificate), the
workload identity that reads it, and the store (Cosmos DB for Apache Cassandra): desired ARM
documents, read-diff-write against Azure Resource Manager, and the cluster's Kubernetes API
credentials (Entra ID; local accounts are off).

Bodies are plain ARM JSON (the SDK's models accept and return it), so the
diff compares exactly what goes over the wire."""
from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerregistry import ContainerRegistryManagementClient
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from visage_deploy import key_vault
from visage_deploy.diff import Change, change_for
from visage_deploy.errors import DeployError, error_code, explain
from visage_deploy.settings import COSMOS_CASSANDRA_PORT, DeploySettings

ACR_PULL_ROLE = "7f951dda-4ed3-4680-a7ca-43fe172d538d"           # built-in "AcrPull"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"   # built-in "Key Vault Secrets User"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"   # "Azure Kubernetes Service RBAC Cluster Admin"
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"       # the deployer: read/write secret values
KEY_VAULT_CERTIFICATES_OFFICER = "a4417e6f-fecd-4de8-b567-7b0420556985"  # the deployer: make the certificate
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"  # the cluster: put its load balancer on our static IP
AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"            # Entra ID app every AKS API server trusts
ROLE_ASSIGNMENT_API = "2022-04-01"
KEY_VAULT_API = "2024-11-01"
IDENTITY_API = "2024-11-30"
NETWORK_API = "2024-05-01"
# The autoscaler owns the node counts once the cluster exists: not drift.
CLUSTER_IGNORED = frozenset({"properties.agentPoolProfiles[0].count", "properties.agentPoolProfiles[1].count"})
SERVICE_ACCOUNT_SUBJECT = "system:serviceaccount:{namespace}:visage"
CASSANDRA_SECRETS = {"cassandra-username": "VISAGE_CASSANDRA_USERNAME", "cassandra-password": "VISAGE_CASSANDRA_PASSWORD"}
# Key Vault object names (secrets) of the values the deploy writes from the operator's environment.
SECRET_OBJECTS = {"VISAGE_CASSANDRA_USERNAME": "cassandra-username", "VISAGE_CASSANDRA_PASSWORD": "cassandra-password",
                  "VISAGE_AZURE_FACE_KEY": "azure-face-key"}
SIGNING_KEY_SECRET = "auth-signing-key"   # the local issuer's one Ed25519 key (PEM), made once
JWKS_SECRET = "auth-jwks"                 # its public half, the JWKS every pod verifies tokens with
CERTIFICATE = "gateway-tls"

Step = Callable[[str], None]


@dataclass
class AzureClients:
    resources: ResourceManagementClient
    registries: ContainerRegistryManagementClient
    tasks: ContainerRegistryTasksMgmtClient
    clusters: ContainerServiceClient
    cosmos: CosmosDBManagementClient

    @classmethod
    def connect(cls, settings: DeploySettings, credential: TokenCredential) -> "AzureClients":
        options = dict(base_url=settings.arm_endpoint, polling_interval=settings.poll_seconds,
                       connection_verify=settings.connection_verify,
                       credential_scopes=[settings.arm_endpoint.rstrip("/") + "/.default"])
        args = (credential, settings.subscription_id)
        return cls(ResourceManagementClient(*args, **options), ContainerRegistryManagementClient(*args, **options),
                   ContainerRegistryTasksMgmtClient(*args, **options), ContainerServiceClient(*args, **options),
                   CosmosDBManagementClient(*args, **options))


def desired_resource_group(settings: DeploySettings) -> dict:
    return {"location": settings.location, "tags": settings.tags}


def desired_registry(settings: DeploySettings) -> dict:
    # Admin user off: the cluster pulls with its managed identity (AcrPull).
    return {"location": settings.location, "tags": settings.tags, "sku": {"name": settings.registry_sku},
            "properties": {"adminUserEnabled": False}}


def desired_cluster(settings: DeploySettings) -> dict:
    zones = {"availabilityZones": list(settings.zones)} if settings.zones else {}
    system = {"name": "system", "mode": "System", "osType": "Linux", "type": "VirtualMachineScaleSets",
              "vmSize": settings.system_vm_size, "count": settings.system_node_count, "enableAutoScaling": True,
              "minCount": settings.system_node_count, "maxCount": settings.system_node_count + 1,
              # only CoreDNS, metrics and CSI drivers here: Visage's pods go to the user pool
              "nodeTaints": ["CriticalAddonsOnly=true:NoSchedule"], **zones}
    user = {"name": "user", "mode": "User", "osType": "Linux", "type": "VirtualMachineScaleSets",
            "vmSize": settings.node_vm_size, "count": settings.node_count, "enableAutoScaling": True,
            "minCount": settings.node_count, "maxCount": settings.node_max_count, **zones}
    if settings.overlay == "prod":
        # Guaranteed pods asking for whole CPUs get cores of their own: the
        # gateway's Envoy then shares no core with the Python services (see
        # visage.placement and bench/bench_gateway.py for what that saves).
        user["kubeletConfig"] = {"cpuManagerPolicy": "static"}
    tier = "Standard" if settings.overlay == "prod" else "Free"  # Standard = uptime SLA
    return {
        "location": settings.location, "tags": settings.tags,
        "identity": {"type": "SystemAssigned"},
        "sku": {"name": "Base", "tier": tier},
        "properties": {
            "dnsPrefix": settings.cluster, "enableRBAC": True, "agentPoolProfiles": [system, user],
            # Cilium enforces the NetworkPolicies in k8s/base (without an engine they are inert).
            "networkProfile": {"networkPlugin": "azure", "networkPluginMode": "overlay", "networkDataplane": "cilium",
                               "networkPolicy": "cilium", "loadBalancerSku": "standard"},
            # Entra ID sign-in with Azure RBAC; no static admin kubeconfig exists to leak.
            "aadProfile": {"managed": True, "enableAzureRBAC": True},
            "disableLocalAccounts": True,
            "oidcIssuerProfile": {"enabled": True},
            "securityProfile": {"workloadIdentity": {"enabled": True}},
            "autoUpgradeProfile": {"upgradeChannel": settings.upgrade_channel, "nodeOSUpgradeChannel": "NodeImage"},
            "addonProfiles": {"azureKeyvaultSecretsProvider": {"enabled": True,
                                                               "config": {"enableSecretRotation": "true"}}},
        },
    }


# The account's own backup (issue 26). Continuous backup (point-in-time restore) is not offered for
# the API for Cassandra (Microsoft's "Continuous backup with point-in-time restore" applies to NoSQL,
# MongoDB, Gremlin and Table), so: periodic, every 4 hours, each kept 7 days, geo-redundant. A
# restore of it is a support request to Azure into a new account; `visage backup` (a CronJob or an
# operator) gives self-service archives on top (README "Backups and moving to Cassandra").
COSMOS_BACKUP_POLICY = {"type": "Periodic", "periodicModeProperties": {
    "backupIntervalInMinutes": 240, "backupRetentionIntervalInHours": 168, "backupStorageRedundancy": "Geo"}}


def desired_cosmos(settings: DeploySettings) -> dict:
    """Cosmos DB for Apache Cassandra: serverless unless a throughput is configured; TLS 1.2 only.
    Strong consistency (one write region): the store's conditional writes read and write at
    LOCAL_SERIAL / LOCAL_QUORUM, which Cosmos DB refuses on the default Session account; and
    server-side retry (DisableRateLimitingResponses): Cosmos DB retries a throttled request itself
    before answering 429, which the store then retries with backoff (README "Choosing a Cassandra").
    The account's own backup is on (COSMOS_BACKUP_POLICY; restore: deploy/aks/README.md "Backups")."""
    capabilities = [{"name": "EnableCassandra"}, {"name": "DisableRateLimitingResponses"}] + (
        [] if settings.cosmos_throughput else [{"name": "EnableServerless"}])
    return {"location": settings.location, "tags": settings.tags, "kind": "GlobalDocumentDB",
            "properties": {"databaseAccountOfferType": "Standard", "capabilities": capabilities,
                           "consistencyPolicy": {"defaultConsistencyLevel": "Strong"},
                           "backupPolicy": COSMOS_BACKUP_POLICY,
                           "locations": [{"locationName": settings.location, "failoverPriority": 0}],
                           "minimalTlsVersion": "Tls12", "publicNetworkAccess": "Enabled"}}


def desired_identity(settings: DeploySettings) -> dict:
    return {"location": settings.location, "tags": settings.tags}


def desired_key_vault(settings: DeploySettings, tenant_id: str) -> dict:
    """RBAC authorisation (the workload identity gets "Key Vault Secrets User" on this vault only), said
    explicitly; `accessPolicies` is required by the REST API unless createMode is recover: empty."""
    return {"location": settings.location, "tags": settings.tags,
            "properties": {"tenantId": tenant_id, "sku": {"family": "A", "name": "standard"}, "accessPolicies": [],
                           "enableRbacAuthorization": True, "enableSoftDelete": True, "softDeleteRetentionInDays": 7}}


def desired_public_ip(settings: DeploySettings) -> dict:
    """The gateway's address, made before the cluster's load balancer so its name is known up front (it
    goes into VISAGE_GATEWAY_HOSTNAMES and the certificate in the same deploy). Standard SKU: what a
    Standard load balancer takes; zone-redundant where the region has zones."""
    zones = {"zones": list(settings.zones)} if settings.zones else {}
    return {"location": settings.location, "tags": settings.tags, "sku": {"name": "Standard", "tier": "Regional"},
            **zones, "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4",
                                    "dnsSettings": {"domainNameLabel": settings.dns_label_name}}}


def _as_json(model) -> dict:
    return model.as_dict() if hasattr(model, "as_dict") else dict(model)


def _read(action: str, settings: DeploySettings, get: Callable[[], object]) -> dict | None:
    try:
        return _as_json(get())
    except ResourceNotFoundError:
        return None
    except HttpResponseError as error:
        if error.status_code == 404:
            return None
        raise explain(error, action, settings.location) from error


def _owned(settings: DeploySettings, live: dict | None) -> bool:
    return bool(live) and (live.get("tags") or {}).get("visage-deployment") == settings.deployment_id


def _arm_id(settings: DeploySettings, provider_path: str) -> str:
    return (f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
            f"/providers/{provider_path}")


def _identity_id(settings: DeploySettings) -> str:
    return _arm_id(settings, f"Microsoft.ManagedIdentity/userAssignedIdentities/{settings.workload_identity}")


def _vault_id(settings: DeploySettings) -> str:
    return _arm_id(settings, f"Microsoft.KeyVault/vaults/{settings.key_vault}")


def _deleted_vault_id(settings: DeploySettings) -> str:
    return (f"/subscriptions/{settings.subscription_id}/providers/Microsoft.KeyVault/locations/{settings.location}"
            f"/deletedVaults/{settings.key_vault}")


def public_ip_id(settings: DeploySettings) -> str:
    return _arm_id(settings, f"Microsoft.Network/publicIPAddresses/{settings.public_ip}")


def live_state(clients: AzureClients, settings: DeploySettings) -> dict[str, dict | None]:
    rg, name = settings.resource_group, settings.cluster
    generic = clients.resources.resources
    live = {"resource group": _read("read resource group", settings, lambda: clients.resources.resource_groups.get(rg))}
    names = ["container registry", "AKS cluster", "public IP", "workload identity", "Key Vault"] + (
        ["Cosmos DB account"] if settings.store_kind == "cosmos" else [])
    if live["resource group"] is None:  # nothing below can exist
        return {**live, **{kind: None for kind in names}}
    live["container registry"] = _read("read registry", settings,
                                       lambda: clients.registries.registries.get(rg, settings.registry))
    live["AKS cluster"] = _read("read cluster", settings, lambda: clients.clusters.managed_clusters.get(rg, name))
    live["public IP"] = _read("read public IP", settings,
                              lambda: generic.get_by_id(public_ip_id(settings), api_version=NETWORK_API))
    live["workload identity"] = _read("read workload identity", settings,
                                      lambda: generic.get_by_id(_identity_id(settings), api_version=IDENTITY_API))
    live["Key Vault"] = _read("read Key Vault", settings, lambda: generic.get_by_id(_vault_id(settings), api_version=KEY_VAULT_API))
    if settings.store_kind == "cosmos":
        live["Cosmos DB account"] = _read("read Cosmos DB account", settings,
                                          lambda: clients.cosmos.database_accounts.get(rg, settings.cosmos_account))
    return live


def _desired(settings: DeploySettings, live: dict | None) -> list[tuple[str, str, dict, frozenset]]:
    desired = [("resource group", settings.resource_group, desired_resource_group(settings), frozenset()),
               ("container registry", settings.registry, desired_registry(settings), frozenset()),
               ("AKS cluster", settings.cluster, desired_cluster(settings), CLUSTER_IGNORED),
               ("public IP", f"{settings.public_ip} ({settings.azure_fqdn})", desired_public_ip(settings), frozenset())]
    tenant = ((live or {}).get("workload identity") or {}).get("properties", {}).get("tenantId", "(identity's tenant)")
    desired += [("workload identity", settings.workload_identity, desired_identity(settings), frozenset()),
                ("Key Vault", settings.key_vault, desired_key_vault(settings, tenant), frozenset())]
    if settings.store_kind == "cosmos":
        desired.append(("Cosmos DB account", settings.cosmos_account, desired_cosmos(settings), frozenset()))
    return desired


def plan(settings: DeploySettings, live: dict[str, dict | None] | None) -> list[Change]:
    """Changes to make; with no live state (no credentials) everything is desired.
    A resource group that exists but is not this deployment's is used, never changed."""
    changes = []
    for kind, name, body, ignore in _desired(settings, live):
        if live is None:
            changes.append(Change(kind, name, "create"))
        elif kind == "resource group" and live[kind] is not None and not _owned(settings, live[kind]):
            changes.append(Change(kind, name, "unchanged"))
        else:
            changes.append(change_for(kind, name, body, live[kind], ignore))
    return changes


def apply(clients: AzureClients, settings: DeploySettings, step: Step) -> dict:
    """Creates or updates what differs; returns the live documents by kind."""
    live = live_state(clients, settings)
    changes = {change.kind: change for change in plan(settings, live)}
    rg, generic = settings.resource_group, clients.resources.resources
    if _needs(changes["resource group"], step):
        _call("create resource group", settings,
              lambda: clients.resources.resource_groups.create_or_update(rg, desired_resource_group(settings)))
    if _needs(changes["container registry"], step):
        live["container registry"] = _call("create registry", settings, lambda: clients.registries.registries.begin_create(
            rg, settings.registry, desired_registry(settings)).result())
    if _needs(changes["AKS cluster"], step):
        step("  (an AKS cluster takes 5-10 minutes)")
        live["AKS cluster"] = _call("create AKS cluster", settings, lambda: clients.clusters.managed_clusters
                                    .begin_create_or_update(rg, settings.cluster, desired_cluster(settings)).result())
    grant_role(clients, settings, live["container registry"]["id"], ACR_PULL_ROLE,
               live["AKS cluster"]["properties"]["identityProfile"]["kubeletidentity"]["objectId"],
               "AcrPull for the cluster", step)
    if _needs(changes["public IP"], step):
        live["public IP"] = _call("create the gateway's public IP", settings, lambda: generic.begin_create_or_update_by_id(
            public_ip_id(settings), desired_public_ip(settings), api_version=NETWORK_API).result())
    # The cloud controller (the cluster's own identity) attaches the IP to its load balancer.
    grant_role(clients, settings, live["public IP"]["id"], NETWORK_CONTRIBUTOR,
               live["AKS cluster"]["identity"]["principalId"], "Network Contributor on the public IP for the cluster", step)
    if settings.store_kind == "cosmos" and _needs(changes["Cosmos DB account"], step):
        step("  (a Cosmos DB account takes 5-15 minutes)")
        live["Cosmos DB account"] = _call("create Cosmos DB account", settings, lambda: clients.cosmos.database_accounts
                                          .begin_create_or_update(rg, settings.cosmos_account,
                                                                  desired_cosmos(settings)).result())
    if _needs(changes["workload identity"], step):
        live["workload identity"] = _call("create workload identity", settings, lambda: generic.begin_create_or_update_by_id(
            _identity_id(settings), desired_identity(settings), api_version=IDENTITY_API).result())
    live["Key Vault"] = ensure_key_vault(clients, settings, live, step)
    return live


def ensure_key_vault(clients: AzureClients, settings: DeploySettings, live: dict, step: Step) -> dict:
    """The vault's name is fixed, and a deleted vault stays soft-deleted (7 days) holding its name: a
    vault found there is recovered, with its secrets and certificate (or purged first when the operator
    set VISAGE_AZ_PURGE_DELETED_VAULT=1). Then the usual diff: a PUT only when what we set differs."""
    generic = clients.resources.resources
    tenant = live["workload identity"]["properties"]["tenantId"]
    current = live["Key Vault"]
    if current is None:
        current = _revive_deleted_vault(clients, settings, tenant, step)
    change = change_for("Key Vault", settings.key_vault, desired_key_vault(settings, tenant), current)
    if not _needs(change, step):
        return current
    return _call("create Key Vault", settings, lambda: generic.begin_create_or_update_by_id(
        _vault_id(settings), desired_key_vault(settings, tenant), api_version=KEY_VAULT_API).result())


def _revive_deleted_vault(clients: AzureClients, settings: DeploySettings, tenant: str, step: Step) -> dict | None:
    generic = clients.resources.resources
    deleted = _read("read deleted Key Vaults", settings,
                    lambda: generic.get_by_id(_deleted_vault_id(settings), api_version=KEY_VAULT_API))
    if deleted is None:
        return None
    if settings.purge_deleted_vault:
        step(Change("soft-deleted Key Vault", settings.key_vault, "delete").line() + " (purged: VISAGE_AZ_PURGE_DELETED_VAULT=1)")
        _arm_post(clients, settings, "purge the soft-deleted Key Vault", f"{_deleted_vault_id(settings)}/purge",
                  KEY_VAULT_API)
        return None
    step(f"  ~ Key Vault {settings.key_vault}: recover (soft-deleted by an earlier undeploy; its secrets come back)")
    recover = {"location": settings.location, "properties": {
        "tenantId": tenant, "sku": {"family": "A", "name": "standard"}, "createMode": "recover"}}
    return _call("recover the soft-deleted Key Vault", settings, lambda: generic.begin_create_or_update_by_id(
        _vault_id(settings), recover, api_version=KEY_VAULT_API).result())


def _arm_post(clients: AzureClients, settings: DeploySettings, action: str, path: str, api_version: str) -> None:
    """A POST action no installed SDK wraps (purge), through the resource client's pipeline; a 202 is
    followed through its Location until the operation ends."""
    from azure.core.rest import HttpRequest
    response = clients.resources.send_request(HttpRequest("POST", f"{path}?api-version={api_version}"))
    while response.status_code == 202 and response.headers.get("Location"):
        time.sleep(settings.poll_seconds)
        response = clients.resources.send_request(HttpRequest("GET", response.headers["Location"]))
    if response.status_code >= 400:
        raise DeployError(f"{action}: Azure returned {response.status_code}: {response.text()[:300]}")


def _needs(change: Change, step: Step) -> bool:
    step(change.line())
    return change.action != "unchanged"


def _call(action: str, settings: DeploySettings, call: Callable[[], object]) -> dict:
    try:
        return _as_json(call())
    except HttpResponseError as error:
        raise explain(error, action, settings.location) from error


def grant_role(clients: AzureClients, settings: DeploySettings, scope: str, role: str, principal: str,
               label: str, step: Step, principal_type: str | None = "ServicePrincipal") -> None:
    """One role assignment, named from scope+principal+role so it is stable. ARM answers 409
    RoleAssignmentExists when the same grant exists under another name (e.g. made by
    `az aks update --attach-acr`): that is the desired state too."""
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}|{principal}|{role}")
    assignment_id = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    generic = clients.resources.resources
    if _read(f"read role assignment {label}", settings,
             lambda: generic.get_by_id(assignment_id, api_version=ROLE_ASSIGNMENT_API)) is not None:
        step(Change("role assignment", label, "unchanged").line())
        return
    body = {"properties": {
        "roleDefinitionId": f"/subscriptions/{settings.subscription_id}/providers/Microsoft.Authorization"
                            f"/roleDefinitions/{role}",
        "principalId": principal, **({"principalType": principal_type} if principal_type else {})}}
    try:
        generic.begin_create_or_update_by_id(assignment_id, body, api_version=ROLE_ASSIGNMENT_API).result()
    except HttpResponseError as error:
        if error.status_code == 409 and error_code(error) == "RoleAssignmentExists":
            step(Change("role assignment", label, "unchanged").line() + " (granted before, under another name)")
            return
        raise explain(error, f"grant {label}", settings.location) from error
    step(Change("role assignment", label, "create").line())


def provision_vault(clients: AzureClients, settings: DeploySettings, credential, live: dict, step: Step) -> dict:
    """Everything the pods read from Key Vault: the store's credentials (Cosmos keys, or the external
    Cassandra's), the local issuer's key and JWKS, the gateway's certificate; the workload identity
    allowed to read them and federated with the cluster's service account. A secret is written only
    when its value differs (each write is a new version, and a new version restarts the pods).
    Returns what the Kubernetes objects need, and the signing key for the admin sign-in link."""
    grant_vault_access(clients, settings, credential, step)
    vault = vault_client(settings, credential, live, step)
    values = {SECRET_OBJECTS[name]: value for name, value in settings.secret_env.items() if name in SECRET_OBJECTS}
    endpoint = None
    if settings.store_kind == "cosmos":
        ensure_keyspace(clients, settings, step)
        keys = _call("read Cosmos DB keys", settings,
                     lambda: clients.cosmos.database_accounts.list_keys(settings.resource_group, settings.cosmos_account))
        values.update({"cassandra-username": settings.cosmos_account,
                       "cassandra-password": keys.get("primaryMasterKey") or keys.get("primary_master_key")})
        endpoint = {"hosts": f"{settings.cosmos_account}.cassandra.cosmos.azure.com", "port": str(COSMOS_CASSANDRA_PORT)}
    signing_key = None
    if settings.identity_mode == "local":
        signing_key = vault.secret(SIGNING_KEY_SECRET) or _new_signing_key()
        values.update({SIGNING_KEY_SECRET: signing_key, JWKS_SECRET: json.dumps(jwks_of(signing_key), sort_keys=True)})
    versions = {name: ensure_secret(clients, settings, vault, name, value, step) for name, value in sorted(values.items())}
    certificate = ensure_certificate(settings, vault, step)
    versions[CERTIFICATE] = certificate["id"].rstrip("/").rsplit("/", 1)[1]
    identity = live["workload identity"]["properties"]
    grant_role(clients, settings, _vault_id(settings), KEY_VAULT_SECRETS_USER, identity["principalId"],
               "Key Vault Secrets User for the workload identity", step)
    issuer = live["AKS cluster"]["properties"]["oidcIssuerProfile"]["issuerURL"]
    federated = {"properties": {"issuer": issuer, "audiences": ["api://AzureADTokenExchange"],
                                "subject": SERVICE_ACCOUNT_SUBJECT.format(namespace=settings.namespace)}}
    federated_id = f"{_identity_id(settings)}/federatedIdentityCredentials/visage"
    live_federated = _read("read the workload identity's federation", settings, lambda: clients.resources.resources
                           .get_by_id(federated_id, api_version=IDENTITY_API))
    if _needs(change_for("federated credential", "visage", federated, live_federated), step):
        _call("federate the workload identity with the cluster", settings,
              lambda: generic_put(clients, federated_id, federated, IDENTITY_API))
    env_secrets = {name: variable for variable, name in SECRET_OBJECTS.items() if name in values}
    return {**(endpoint or {}), "client_id": identity["clientId"], "tenant_id": identity["tenantId"],
            "key_vault": settings.key_vault, "secrets": env_secrets, "versions": versions,
            "local_issuer": signing_key is not None, "certificate": CERTIFICATE,
            "certificate_pem": key_vault.certificate_pem(certificate), "signing_key": signing_key}


def vault_client(settings: DeploySettings, credential, live: dict, step: Step,
                 grant_wait: float = key_vault.GRANT_WAIT_SECONDS) -> key_vault.Vault:
    url = settings.vault_endpoint.format(vault=settings.key_vault) or live["Key Vault"]["properties"]["vaultUri"]
    return key_vault.Vault(url.rstrip("/"), credential, settings.connection_verify, settings.poll_seconds, step,
                           grant_wait)


def vault_secret_names(settings: DeploySettings) -> list[str]:
    """The secrets provision_vault writes for these settings."""
    names = [SECRET_OBJECTS[name] for name in settings.secret_env if name in SECRET_OBJECTS]
    if settings.store_kind == "cosmos":
        names += list(CASSANDRA_SECRETS)
    if settings.identity_mode == "local":
        names += [SIGNING_KEY_SECRET, JWKS_SECRET]
    return sorted(set(names))


def current_versions(clients: AzureClients, settings: DeploySettings, credential, live: dict) -> dict[str, str]:
    """The versions the pods run with now (for a plan: provision_vault's `versions`, read, not written).
    Unknown ones (nothing there yet, or no read access) are left out: the plan then shows the pods' change."""
    versions = {}
    for name in vault_secret_names(settings):
        secret = _read(f"read secret {name}", settings, lambda: clients.resources.resources.get_by_id(
            f"{_vault_id(settings)}/secrets/{name}", api_version=KEY_VAULT_API))
        if secret:
            versions[name] = secret["properties"]["secretUriWithVersion"].rstrip("/").rsplit("/", 1)[1]
    try:
        certificate = vault_client(settings, credential, live, lambda line: None, grant_wait=0).certificate(CERTIFICATE)
    except DeployError:  # no data-plane access yet: the plan cannot know
        certificate = None
    if certificate:
        versions[CERTIFICATE] = certificate["id"].rstrip("/").rsplit("/", 1)[1]
    return versions


def generic_put(clients: AzureClients, resource_id: str, body: dict, api_version: str):
    return clients.resources.resources.begin_create_or_update_by_id(resource_id, body, api_version=api_version).result()


def grant_vault_access(clients: AzureClients, settings: DeploySettings, credential, step: Step) -> None:
    """The deployer reads and writes secret values and makes the certificate (Key Vault's data plane)."""
    deployer = signed_in_object_id(credential, settings)
    for role, label in ((KEY_VAULT_SECRETS_OFFICER, "Key Vault Secrets Officer for the deployer"),
                        (KEY_VAULT_CERTIFICATES_OFFICER, "Key Vault Certificates Officer for the deployer")):
        grant_role(clients, settings, _vault_id(settings), role, deployer, label, step, principal_type=None)


def ensure_secret(clients: AzureClients, settings: DeploySettings, vault: key_vault.Vault, name: str, value: str,
                  step: Step) -> str:
    """Writes the secret only when Key Vault holds another value (or none); returns its current version."""
    secret_id = f"{_vault_id(settings)}/secrets/{name}"
    if vault.secret(name) == value:
        step(Change("Key Vault secret", name, "unchanged").line())
        live = _read(f"read secret {name}", settings, lambda: clients.resources.resources.get_by_id(
            secret_id, api_version=KEY_VAULT_API))
    else:
        step(Change("Key Vault secret", name, "update").line())
        live = _call(f"store {name} in Key Vault", settings, lambda: generic_put(
            clients, secret_id, {"properties": {"value": value}, "tags": settings.tags}, KEY_VAULT_API))
    return live["properties"]["secretUriWithVersion"].rstrip("/").rsplit("/", 1)[1]


def ensure_certificate(settings: DeploySettings, vault: key_vault.Vault, step: Step) -> dict:
    """The gateway's certificate for the public name: Key Vault's own (self-signed or from the issuer the
    policy names), or the operator's PEM imported as is. Made again only when the name, the issuer or
    the operator's file changed."""
    live = vault.certificate(CERTIFICATE)
    if settings.certificate == "file":
        pem = settings.certificate_file.read_text()
        if live is not None and live.get("x5t") == key_vault.thumbprint(pem):
            step(Change("TLS certificate", f"{CERTIFICATE} (from {settings.certificate_file})", "unchanged").line())
            return live
        step(Change("TLS certificate", f"{CERTIFICATE} (from {settings.certificate_file})", "update").line())
        return vault.import_certificate(CERTIFICATE, pem)
    policy = key_vault.certificate_policy(settings)
    label = f"{CERTIFICATE} (CN={settings.public_hostname}, issuer {policy['issuer']['name']})"
    if live is not None and key_vault.policy_matches(live, policy):
        step(Change("TLS certificate", label, "unchanged").line())
        return live
    step(Change("TLS certificate", label, "create" if live is None else "update").line())
    return vault.create_certificate(CERTIFICATE, policy)


def _new_signing_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()


def jwks_of(signing_key: str) -> dict:
    """The JWKS the local issuer publishes for this key (visage.auth.local: the same kid)."""
    return _issuer(signing_key).jwks()


def _issuer(signing_key: str):
    from visage.auth.local import LocalIssuer
    return LocalIssuer.from_key(signing_key.encode())


def admin_token(signing_key: str, ttl_seconds: int) -> str:
    """A short-lived admin token from the deployment's local issuer: the sign-in link's."""
    from visage.auth.roles import Role
    return _issuer(signing_key).mint(Role.ADMIN, "deployer", ttl_seconds)


def desired_keyspace(settings: DeploySettings) -> dict:
    """Made here rather than by the app's CREATE KEYSPACE, because its throughput is an ARM setting:
    none on a serverless account, else autoscale up to VISAGE_AZ_COSMOS_THROUGHPUT RU/s."""
    options = {"autoscaleSettings": {"maxThroughput": settings.cosmos_throughput}} if settings.cosmos_throughput else {}
    return {"properties": {"resource": {"id": settings.keyspace}, "options": options}}


def ensure_keyspace(clients: AzureClients, settings: DeploySettings, step: Step) -> None:
    rg, account = settings.resource_group, settings.cosmos_account
    live = _read("read the Cosmos DB keyspace", settings,
                 lambda: clients.cosmos.cassandra_resources.get_cassandra_keyspace(rg, account, settings.keyspace))
    if live is not None:
        step(Change("Cassandra keyspace", settings.keyspace, "unchanged").line())
        return
    step(Change("Cassandra keyspace", settings.keyspace, "create").line())
    _call("create the Cosmos DB keyspace", settings, lambda: clients.cosmos.cassandra_resources
          .begin_create_update_cassandra_keyspace(rg, account, settings.keyspace, desired_keyspace(settings)).result())


def signed_in_object_id(credential, settings: DeploySettings) -> str:
    """The object id (oid claim) of whoever runs the deploy, read from their own ARM token."""
    token = credential.get_token(settings.arm_endpoint.rstrip("/") + "/.default").token
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["oid"]
    except (IndexError, ValueError, KeyError) as error:
        raise DeployError("could not read the signed-in identity's object id from its Azure token") from error


def kubernetes_credentials(clients: AzureClients, settings: DeploySettings, credential, live: dict,
                           step: Step, grant: bool = True) -> tuple[bytes, str]:
    """The user kubeconfig (server + CA; local accounts are disabled, so there is no admin one) and an
    Entra ID token for the AKS API server, after granting the deployer cluster-admin through Azure RBAC
    (`grant`; a plan changes nothing and uses whatever access the deployer has)."""
    if grant:
            grant_role(clients, settings, live["AKS cluster"]["id"], AKS_RBAC_CLUSTER_ADMIN,
                   signed_in_object_id(credential, settings), "AKS RBAC Cluster Admin for the deployer", step,
                   principal_type=None)  # a person or a service principal: ARM works it out
    result = _call("fetch cluster credentials", settings, lambda: clients.clusters.managed_clusters
                   .list_cluster_user_credentials(settings.resource_group, settings.cluster))
    value = result["kubeconfigs"][0]["value"]
    kubeconfig = value if isinstance(value, bytes) else base64.b64decode(value)
    return kubeconfig, credential.get_token(f"{AKS_SERVER_APP}/.default").token


STORE_TYPE = "microsoft.documentdb/databaseaccounts"


def destroy(clients: AzureClients, settings: DeploySettings, step: Step, confirm: Callable[[str], bool],
            keep_store: bool = False) -> None:
    """Removes what this deployment created, nothing else: the resource group when the deploy made it
    (tag visage-deployment) and nothing in it is to be kept, else each tagged resource in it, one by one.
    A store holding faces (the Cosmos DB account; the in-cluster Cassandra's disk goes with the cluster)
    is deleted only when `confirm` says so; `keep_store` keeps the Cosmos DB account (and its group)."""
    group = _read("read resource group", settings, lambda: clients.resources.resource_groups.get(settings.resource_group))
    if group is None:
        step(Change("resource group", settings.resource_group, "unchanged").line() + " (already gone)")
        return
    generic = clients.resources.resources
    resources = [_as_json(resource) for resource in generic.list_by_resource_group(settings.resource_group)]
    ours = [item for item in resources if (item.get("tags") or {}).get("visage-deployment") == settings.deployment_id]
    stores = [item for item in ours if item.get("type", "").lower() == STORE_TYPE]
    if keep_store:
        ours = [item for item in ours if item not in stores]
        for item in stores:
            step(Change("Cosmos DB account", item["name"], "unchanged").line() + " (kept: --keep-store)")
    else:
        _confirm_store_deletion(settings, stores, ours, confirm)
    if _owned(settings, group) and len(ours) == len(resources):
        step(Change("resource group", settings.resource_group, "delete").line() + " (takes several minutes)")
        _call("delete resource group", settings,
              lambda: clients.resources.resource_groups.begin_delete(settings.resource_group).result() or {})
        return
    step(f"  resource group {settings.resource_group} holds what this deploy keeps or did not make: deleting "
         "only what it made")
    for item in resources:
        if item not in ours:
            step(Change(item.get("type", "resource"), item["name"], "unchanged").line() + " (kept)")
    for item in sorted(ours, key=lambda item: DELETE_ORDER.index(item["type"].lower())
                       if item["type"].lower() in DELETE_ORDER else len(DELETE_ORDER)):
        step(Change(item.get("type", "resource"), item["name"], "delete").line())
        _call(f"delete {item['name']}", settings,
              lambda: generic.begin_delete_by_id(item["id"], api_version=API_VERSIONS_BY_TYPE[item["type"].lower()]).result() or {})


def _confirm_store_deletion(settings: DeploySettings, stores: list[dict], ours: list[dict],
                            confirm: Callable[[str], bool]) -> None:
    if stores:
        what = f"the Cosmos DB account {', '.join(item['name'] for item in stores)} with every face, label and model in it"
    elif any(item.get("type", "").lower() == "microsoft.containerservice/managedclusters" for item in ours) \
            and settings.store_kind == "in-cluster":
        what = f"the cluster {settings.cluster} with its in-cluster Cassandra's disk (every face, label and model)"
    else:
        return
    if not confirm(f"delete {what}? (`visage backup` first keeps a copy)"):
        raise DeployError(f"not deleted: {what}. Run `make undeploy UNDEPLOY_FLAGS=--yes` to delete it, or "
                          "`UNDEPLOY_FLAGS=--keep-store` to delete everything else and keep the Cosmos DB account")


# The load balancer holds the public IP until the cluster is gone.
DELETE_ORDER = ["microsoft.containerservice/managedclusters", "microsoft.network/publicipaddresses"]


API_VERSIONS_BY_TYPE = {  # for deleting by id through the generic client
    "microsoft.containerservice/managedclusters": "2025-07-01",
    "microsoft.containerregistry/registries": "2025-04-01",
    "microsoft.documentdb/databaseaccounts": "2025-04-15",
    "microsoft.keyvault/vaults": KEY_VAULT_API,
    "microsoft.managedidentity/userassignedidentities": IDENTITY_API,
    "microsoft.network/publicipaddresses": NETWORK_API,
}
