"""Resource group, container registry, AKS cluster and the store (Cosmos DB for
Apache Cassandra, its credentials in Key Vault, the workload identity that reads
them): desired ARM documents, read-diff-write against Azure Resource Manager,
and the cluster's Kubernetes API credentials (Entra ID; local accounts are off).

Bodies are plain ARM JSON (the SDK's models accept and return it), so the
diff compares exactly what goes over the wire."""
from __future__ import annotations

import base64
import json
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

from visage_deploy.diff import Change, change_for
from visage_deploy.errors import DeployError, error_code, explain
from visage_deploy.settings import COSMOS_CASSANDRA_PORT, DeploySettings

ACR_PULL_ROLE = "7f951dda-4ed3-4680-a7ca-43fe172d538d"           # built-in "AcrPull"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"   # built-in "Key Vault Secrets User"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"   # "Azure Kubernetes Service RBAC Cluster Admin"
AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"            # Entra ID app every AKS API server trusts
ROLE_ASSIGNMENT_API = "2022-04-01"
KEY_VAULT_API = "2024-11-01"
IDENTITY_API = "2024-11-30"
# The autoscaler owns the node counts once the cluster exists: not drift.
CLUSTER_IGNORED = frozenset({"properties.agentPoolProfiles[0].count", "properties.agentPoolProfiles[1].count"})
SERVICE_ACCOUNT_SUBJECT = "system:serviceaccount:{namespace}:visage"
CASSANDRA_SECRETS = {"cassandra-username": "VISAGE_CASSANDRA_USERNAME", "cassandra-password": "VISAGE_CASSANDRA_PASSWORD"}

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
    # RBAC authorisation: the workload identity gets "Key Vault Secrets User" on this vault only.
    return {"location": settings.location, "tags": settings.tags,
            "properties": {"tenantId": tenant_id, "sku": {"family": "A", "name": "standard"},
                           "enableRbacAuthorization": True, "enableSoftDelete": True, "softDeleteRetentionInDays": 7}}


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


def live_state(clients: AzureClients, settings: DeploySettings) -> dict[str, dict | None]:
    rg, name = settings.resource_group, settings.cluster
    generic = clients.resources.resources
    live = {"resource group": _read("read resource group", settings, lambda: clients.resources.resource_groups.get(rg))}
    names = ["container registry", "AKS cluster"] + (["Cosmos DB account", "workload identity", "Key Vault"]
                                                     if settings.store_kind == "cosmos" else [])
    if live["resource group"] is None:  # nothing below can exist
        return {**live, **{kind: None for kind in names}}
    live["container registry"] = _read("read registry", settings,
                                       lambda: clients.registries.registries.get(rg, settings.registry))
    live["AKS cluster"] = _read("read cluster", settings, lambda: clients.clusters.managed_clusters.get(rg, name))
    if settings.store_kind == "cosmos":
        live["Cosmos DB account"] = _read("read Cosmos DB account", settings,
                                          lambda: clients.cosmos.database_accounts.get(rg, settings.cosmos_account))
        live["workload identity"] = _read("read workload identity", settings,
                                          lambda: generic.get_by_id(_identity_id(settings), api_version=IDENTITY_API))
        live["Key Vault"] = _read("read Key Vault", settings, lambda: generic.get_by_id(_vault_id(settings), api_version=KEY_VAULT_API))
    return live


def _desired(settings: DeploySettings, live: dict | None) -> list[tuple[str, str, dict, frozenset]]:
    desired = [("resource group", settings.resource_group, desired_resource_group(settings), frozenset()),
               ("container registry", settings.registry, desired_registry(settings), frozenset()),
               ("AKS cluster", settings.cluster, desired_cluster(settings), CLUSTER_IGNORED)]
    if settings.store_kind == "cosmos":
        tenant = ((live or {}).get("workload identity") or {}).get("properties", {}).get("tenantId", "(identity's tenant)")
        desired += [("Cosmos DB account", settings.cosmos_account, desired_cosmos(settings), frozenset()),
                    ("workload identity", settings.workload_identity, desired_identity(settings), frozenset()),
                    ("Key Vault", settings.key_vault, desired_key_vault(settings, tenant), frozenset())]
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
    if settings.store_kind == "cosmos":
        if _needs(changes["Cosmos DB account"], step):
            step("  (a Cosmos DB account takes 5-15 minutes)")
            live["Cosmos DB account"] = _call("create Cosmos DB account", settings, lambda: clients.cosmos.database_accounts
                                              .begin_create_or_update(rg, settings.cosmos_account,
                                                                      desired_cosmos(settings)).result())
        if _needs(changes["workload identity"], step):
            live["workload identity"] = _call("create workload identity", settings, lambda: generic.begin_create_or_update_by_id(
                _identity_id(settings), desired_identity(settings), api_version=IDENTITY_API).result())
        tenant = live["workload identity"]["properties"]["tenantId"]
        vault_change = change_for("Key Vault", settings.key_vault, desired_key_vault(settings, tenant), live["Key Vault"])
        if _needs(vault_change, step):
            live["Key Vault"] = _call("create Key Vault", settings, lambda: generic.begin_create_or_update_by_id(
                _vault_id(settings), desired_key_vault(settings, tenant), api_version=KEY_VAULT_API).result())
    return live


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


def provision_store_secrets(clients: AzureClients, settings: DeploySettings, live: dict, step: Step) -> dict:
    """Cosmos keys into Key Vault, the workload identity allowed to read them and federated with the
    cluster's service account. Returns what the Kubernetes objects need (endpoint, client id, vault)."""
    rg, generic = settings.resource_group, clients.resources.resources
    ensure_keyspace(clients, settings, step)
    keys = _call("read Cosmos DB keys", settings,
                 lambda: clients.cosmos.database_accounts.list_keys(rg, settings.cosmos_account))
    secrets = {"cassandra-username": settings.cosmos_account,
               "cassandra-password": keys.get("primaryMasterKey") or keys.get("primary_master_key")}
    for name, value in secrets.items():  # ARM writes the value; nobody can read it back through ARM
        _call(f"store {name} in Key Vault", settings, lambda: generic.begin_create_or_update_by_id(
            f"{_vault_id(settings)}/secrets/{name}", {"properties": {"value": value}, "tags": settings.tags},
            api_version=KEY_VAULT_API).result())
    step(Change("Key Vault secrets", ", ".join(secrets), "update").line())
    identity = live["workload identity"]["properties"]
    grant_role(clients, settings, _vault_id(settings), KEY_VAULT_SECRETS_USER, identity["principalId"],
               "Key Vault Secrets User for the workload identity", step)
    issuer = live["AKS cluster"]["properties"]["oidcIssuerProfile"]["issuerURL"]
    federated = {"properties": {"issuer": issuer, "audiences": ["api://AzureADTokenExchange"],
                                "subject": SERVICE_ACCOUNT_SUBJECT.format(namespace=settings.namespace)}}
    _call("federate the workload identity with the cluster", settings, lambda: generic.begin_create_or_update_by_id(
        f"{_identity_id(settings)}/federatedIdentityCredentials/visage", federated, api_version=IDENTITY_API).result())
    return {"hosts": f"{settings.cosmos_account}.cassandra.cosmos.azure.com", "port": str(COSMOS_CASSANDRA_PORT),
            "client_id": identity["clientId"], "tenant_id": identity["tenantId"], "key_vault": settings.key_vault,
            "secrets": CASSANDRA_SECRETS}


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


def destroy(clients: AzureClients, settings: DeploySettings, step: Step) -> None:
    """Removes what this deployment created, nothing else: the resource group when the deploy
    made it (tag visage-deployment), else each tagged resource in it, one by one."""
    group = _read("read resource group", settings, lambda: clients.resources.resource_groups.get(settings.resource_group))
    if group is None:
        step(Change("resource group", settings.resource_group, "unchanged").line() + " (already gone)")
        return
    if _owned(settings, group):
        step(Change("resource group", settings.resource_group, "delete").line() + " (takes several minutes)")
        _call("delete resource group", settings,
              lambda: clients.resources.resource_groups.begin_delete(settings.resource_group).result() or {})
        return
    step(f"  resource group {settings.resource_group} existed before this deployment: deleting only what it made")
    generic = clients.resources.resources
    for resource in generic.list_by_resource_group(settings.resource_group):
        item = _as_json(resource)
        if (item.get("tags") or {}).get("visage-deployment") != settings.deployment_id:
            step(Change(item.get("type", "resource"), item["name"], "unchanged").line() + " (not ours: kept)")
            continue
        step(Change(item.get("type", "resource"), item["name"], "delete").line())
        _call(f"delete {item['name']}", settings,
              lambda: generic.begin_delete_by_id(item["id"], api_version=API_VERSIONS_BY_TYPE[item["type"].lower()]).result() or {})


API_VERSIONS_BY_TYPE = {  # for deleting by id through the generic client
    "microsoft.containerservice/managedclusters": "2025-07-01",
    "microsoft.containerregistry/registries": "2025-04-01",
    "microsoft.documentdb/databaseaccounts": "2025-04-15",
    "microsoft.keyvault/vaults": KEY_VAULT_API,
    "microsoft.managedidentity/userassignedidentities": IDENTITY_API,
}
