"""Turns Azure's error codes into messages that say what to do next."""
from __future__ import annotations

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError


class DeployError(RuntimeError):
    """A failure the user can act on; the CLI prints it without a traceback."""


PERMISSION_CODES = {"AuthorizationFailed", "LinkedAuthorizationFailed", "Forbidden"}
QUOTA_CODES = {"QuotaExceeded", "OperationNotAllowed", "ErrCode_InsufficientVCPUQuota",
               "InsufficientVCPUQuota", "PublicIPCountLimitReached"}
REGION_CODES = {"LocationNotAvailableForResourceType", "SkuNotAvailable", "NoRegisteredProviderFound",
                "MissingSubscriptionRegistration", "InvalidResourceLocation", "ZonalAllocationFailed"}


def error_code(error: HttpResponseError) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "code", "") or "")


def explain(error: Exception, action: str, location: str) -> DeployError:
    """A DeployError naming the failed step, the cause and the fix."""
    if isinstance(error, ClientAuthenticationError):
        return DeployError(f"{action}: not signed in to Azure ({error.message}). Run `az login`, or set "
                           "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for a service principal.")
    if not isinstance(error, HttpResponseError):
        return DeployError(f"{action}: {error}")
    code = error_code(error)
    detail = getattr(getattr(error, "error", None), "message", "") or error.message
    if code == "TasksOperationsNotAllowed":
        return DeployError(f"{action}: ACR Tasks (builds in Azure) are not allowed on this subscription "
                           "(TasksOperationsNotAllowed: free-trial and some sponsored subscriptions). Build and push "
                           "the images with your local Docker instead: `make deploy-push`, then "
                           f"`VISAGE_AZ_SKIP_IMAGE_BUILD=1 make deploy` (deploy/aks/README.md). Azure said: {detail}")
    if code in PERMISSION_CODES or error.status_code == 403:
        return DeployError(f"{action}: permission denied ({code or 403}). The signed-in identity needs the "
                           "Contributor role on the subscription or resource group (and User Access "
                           f"Administrator to let the cluster pull from the registry). Azure said: {detail}")
    if code in QUOTA_CODES:
        return DeployError(f"{action}: quota exceeded in {location} ({code}). Request a quota increase in the "
                           "portal (Subscriptions > Usage + quotas) or deploy fewer/smaller nodes with "
                           f"VISAGE_AZ_NODE_COUNT / VISAGE_AZ_NODE_VM_SIZE. Azure said: {detail}")
    if code in REGION_CODES:
        return DeployError(f"{action}: not available in region {location} ({code}). Choose another region "
                           "with VISAGE_AZ_LOCATION or another size with VISAGE_AZ_NODE_VM_SIZE, and make sure "
                           f"the resource provider is registered. Azure said: {detail}")
    return DeployError(f"{action}: Azure returned {error.status_code} {code}: {detail}")
