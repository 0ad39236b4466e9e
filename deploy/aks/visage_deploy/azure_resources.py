"""Resource group, container registry and AKS cluster: desired ARM documents,
read-diff-write against Azure Resource Manager, and the cluster's kubeconfig.

Bodies are plain ARM JSON (the SDK's models accept and return it), so the
diff compares exactly what goes over the wire."""
from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerregistry import ContainerRegistryManagementClient
from azure.mgmt.containerregistrytasks import ContainerRegistryTasksMgmtClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.resource.resources import ResourceManagementClient

from visage_deploy.diff import Change, change_for
from visage_deploy.errors import explain
from visage_deploy.settings import DeploySettings

ACR_PULL_ROLE = "7f951dda-4ed3-4680-a7ca-43fe172d538d"  # built-in "AcrPull"
ROLE_ASSIGNMENT_API = "2022-04-01"
# The autoscaler owns the node count once the cluster exists: not drift.
CLUSTER_IGNORED = frozenset({"properties.agentPoolProfiles[0].count"})

Step = Callable[[str], None]


@dataclass
class AzureClients:
    resources: ResourceManagementClient
    registries: ContainerRegistryManagementClient
    tasks: ContainerRegistryTasksMgmtClient
    clusters: ContainerServiceClient

    @classmethod
    def connect(cls, settings: DeploySettings, credential: TokenCredential) -> "AzureClients":
        options = dict(base_url=settings.arm_endpoint, polling_interval=settings.poll_seconds,
                       connection_verify=settings.connection_verify,
                       credential_scopes=[settings.arm_endpoint.rstrip("/") + "/.default"])
        args = (credential, settings.subscription_id)
        return cls(ResourceManagementClient(*args, **options), ContainerRegistryManagementClient(*args, **options),
                   ContainerRegistryTasksMgmtClient(*args, **options), ContainerServiceClient(*args, **options))


def desired_resource_group(settings: DeploySettings) -> dict:
    return {"location": settings.location, "tags": settings.tags}


def desired_registry(settings: DeploySettings) -> dict:
    # Admin user off: the cluster pulls with its managed identity (AcrPull).
    return {"location": settings.location, "tags": settings.tags, "sku": {"name": settings.registry_sku},
            "properties": {"adminUserEnabled": False}}


def desired_cluster(settings: DeploySettings) -> dict:
    pool = {"name": "system", "mode": "System", "osType": "Linux", "type": "VirtualMachineScaleSets",
            "vmSize": settings.node_vm_size, "count": settings.node_count, "enableAutoScaling": True,
            "minCount": settings.node_count, "maxCount": settings.node_max_count}
    if settings.overlay == "prod":
        # Guaranteed pods asking for whole CPUs get cores of their own: the
        # gateway's Envoy then shares no core with the Python services (see
        # visage.placement and bench/bench_gateway.py for what that saves).
        pool["kubeletConfig"] = {"cpuManagerPolicy": "static"}
    tier = "Standard" if settings.overlay == "prod" else "Free"  # Standard = uptime SLA
    return {
        "location": settings.location, "tags": settings.tags,
        "identity": {"type": "SystemAssigned"},
        "sku": {"name": "Base", "tier": tier},
        "properties": {
            "dnsPrefix": settings.cluster, "enableRBAC": True, "agentPoolProfiles": [pool],
            "networkProfile": {"networkPlugin": "azure", "networkPluginMode": "overlay",
                               "loadBalancerSku": "standard"},
        },
    }


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


def live_state(clients: AzureClients, settings: DeploySettings) -> dict[str, dict | None]:
    rg, name = settings.resource_group, settings.cluster
    live = {"resource group": _read("read resource group", settings, lambda: clients.resources.resource_groups.get(rg))}
    if live["resource group"] is None:  # nothing below can exist
        return {**live, "container registry": None, "AKS cluster": None}
    live["container registry"] = _read("read registry", settings,
                                       lambda: clients.registries.registries.get(rg, settings.registry))
    live["AKS cluster"] = _read("read cluster", settings, lambda: clients.clusters.managed_clusters.get(rg, name))
    return live


def plan(settings: DeploySettings, live: dict[str, dict | None] | None) -> list[Change]:
    """Changes to make; with no live state (no credentials) everything is desired."""
    desired = [("resource group", settings.resource_group, desired_resource_group(settings), frozenset()),
               ("container registry", settings.registry, desired_registry(settings), frozenset()),
               ("AKS cluster", settings.cluster, desired_cluster(settings), CLUSTER_IGNORED)]
    if live is None:
        return [Change(kind, name, "create") for kind, name, _, _ in desired]
    return [change_for(kind, name, body, live[kind], ignore) for kind, name, body, ignore in desired]


def apply(clients: AzureClients, settings: DeploySettings, step: Step) -> dict:
    """Creates or updates what differs; returns the live cluster document."""
    live = live_state(clients, settings)
    changes = {change.kind: change for change in plan(settings, live)}
    rg = settings.resource_group
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
    grant_acr_pull(clients, settings, live["container registry"], live["AKS cluster"], step)
    return live["AKS cluster"]


def _needs(change: Change, step: Step) -> bool:
    step(change.line())
    return change.action != "unchanged"


def _call(action: str, settings: DeploySettings, call: Callable[[], object]) -> dict:
    try:
        return _as_json(call())
    except HttpResponseError as error:
        raise explain(error, action, settings.location) from error


def grant_acr_pull(clients: AzureClients, settings: DeploySettings, registry: dict, cluster: dict, step: Step) -> None:
    """What `az aks update --attach-acr` does: the kubelet identity may pull.
    The assignment's name is derived from registry+principal, so it is stable."""
    principal = cluster["properties"]["identityProfile"]["kubeletidentity"]["objectId"]
    registry_id = registry["id"]
    name = uuid.uuid5(uuid.NAMESPACE_URL, f"{registry_id}|{principal}|{ACR_PULL_ROLE}")
    assignment_id = f"{registry_id}/providers/Microsoft.Authorization/roleAssignments/{name}"
    generic = clients.resources.resources
    existing = _read("read AcrPull role assignment", settings,
                     lambda: generic.get_by_id(assignment_id, api_version=ROLE_ASSIGNMENT_API))
    if existing is not None:
        step(Change("role assignment", "AcrPull for the cluster", "unchanged").line())
        return
    step(Change("role assignment", "AcrPull for the cluster", "create").line())
    body = {"properties": {
        "roleDefinitionId": f"/subscriptions/{settings.subscription_id}/providers/Microsoft.Authorization"
                            f"/roleDefinitions/{ACR_PULL_ROLE}",
        "principalId": principal, "principalType": "ServicePrincipal"}}
    _call("grant AcrPull to the cluster", settings,
          lambda: generic.begin_create_or_update_by_id(assignment_id, body, api_version=ROLE_ASSIGNMENT_API).result())


def admin_kubeconfig(clients: AzureClients, settings: DeploySettings) -> bytes:
    result = _call("fetch cluster credentials", settings, lambda: clients.clusters.managed_clusters
                   .list_cluster_admin_credentials(settings.resource_group, settings.cluster))
    value = result["kubeconfigs"][0]["value"]
    return value if isinstance(value, bytes) else base64.b64decode(value)


def destroy(clients: AzureClients, settings: DeploySettings, step: Step) -> None:
    """Deleting the resource group removes the cluster, registry, LB and disks with it."""
    if _read("read resource group", settings,
             lambda: clients.resources.resource_groups.get(settings.resource_group)) is None:
        step(Change("resource group", settings.resource_group, "unchanged").line() + " (already gone)")
        return
    step(Change("resource group", settings.resource_group, "delete").line() + " (takes several minutes)")
    _call("delete resource group", settings,
          lambda: clients.resources.resource_groups.begin_delete(settings.resource_group).result() or {})
