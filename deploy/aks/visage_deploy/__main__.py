"""`python -m visage_deploy {plan,apply,destroy}`: the whole AKS deployment.

plan    prints what apply would create or change (works without credentials:
        then it shows the full desired state, compared with nothing)
apply   creates or updates the resource group, registry, cluster, images and
        Kubernetes objects, changing only what differs; prints the gateway URL
destroy deletes what apply created: the resource group if apply made it, else
        only the resources tagged with this deployment
remove  deletes only the Kubernetes objects apply made (keeps the cluster and store)
push    builds and pushes the images with the local Docker (where ACR Tasks are
        not allowed); then apply with VISAGE_AZ_SKIP_IMAGE_BUILD=1"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from visage_deploy import azure_resources, cost, images, kube
from visage_deploy.azure_resources import AzureClients
from visage_deploy.errors import DeployError, explain
from visage_deploy.settings import OVERLAYS, DeploySettings

GATEWAY_TIMEOUT_SECONDS = 600   # for Azure to give the load balancer a public IP
HEALTH_TIMEOUT_SECONDS = 300    # for /healthz to answer 200 through it


def step(line: str) -> None:
    tqdm.write(line)  # plays well with the image-build progress bar


def heading(text: str) -> None:
    step(f"==> {text}")


def run_plan(settings: DeploySettings, credential) -> int:
    settings.validate()
    clients = AzureClients.connect(settings, credential) if credential else None
    if clients is None:
        heading("no Azure credentials (AZURE_SUBSCRIPTION_ID unset): showing the full desired state")
    heading("what it runs on, and what that costs")
    for line in cost.summary(settings):
        step(line)
    heading(f"Azure ({settings.location}, resource group {settings.resource_group})")
    live = azure_resources.live_state(clients, settings) if clients else None
    for change in azure_resources.plan(settings, live):
        step(change.line())
    context = images.build_context(faces_dir=settings.faces_dir)
    heading(f"images (tag {context.tag}, context {len(context.archive) / 1e6:.1f} MB)")
    registry_exists = bool(live and live["container registry"])
    for change in images.plan(clients if registry_exists else None, settings, context):
        step(change.line())
    heading(f"Kubernetes objects (overlay {settings.overlay}, store {settings.store_kind})")
    refs = {name: images.image_ref(settings, name, context.tag) for name in context.images}
    objects = kube.customize(kube.render(settings.overlay, settings.kustomize), settings, refs)
    objects = without_loader(objects, refs)
    cluster = None
    if live and live["AKS cluster"]:
        cluster = kube.Cluster.with_token(*azure_resources.kubernetes_credentials(
            clients, settings, credential, live, step, grant=False))
    for obj, change in kube.plan(cluster, objects):
        step(change.line() if obj["kind"] != "Secret" else change.line().split(" (")[0])
    return 0


def without_loader(objects: list[dict], refs: dict[str, str]) -> list[dict]:
    """No loader image (no demo photos) → no demo-loader Job."""
    return [obj for obj in objects if obj["kind"] != "Job" or "loader" in refs]


def run_apply(settings: DeploySettings, credential) -> int:
    settings.validate()  # before anything exists: a wrong setting costs nothing
    rendered = kube.render(settings.overlay, settings.kustomize)
    context = images.build_context(faces_dir=settings.faces_dir)
    clients = AzureClients.connect(settings, credential)
    heading(f"Azure ({settings.location}, resource group {settings.resource_group})")
    live = azure_resources.apply(clients, settings, step)
    store = None
    if settings.store_kind == "cosmos":
        heading(f"store: Cosmos DB for Apache Cassandra {settings.cosmos_account} (credentials in Key Vault)")
        store = azure_resources.provision_store_secrets(clients, settings, live, step)
    heading("images")
    refs = images.build_all(clients, settings, context, step)
    heading(f"Kubernetes objects (overlay {settings.overlay}, store {settings.store_kind})")
    cluster = kube.Cluster.with_token(*azure_resources.kubernetes_credentials(clients, settings, credential, live, step))
    kube.wait_for_access(cluster, GATEWAY_TIMEOUT_SECONDS, settings.poll_seconds, step)
    objects = without_loader(kube.customize(rendered, settings, refs, store), refs)
    kube.apply(cluster, objects, step)
    kube.admit_pods(cluster, objects)
    heading("waiting for every Deployment to roll out")
    kube.wait_for_rollouts(cluster, objects, settings.rollout_timeout, settings.poll_seconds, step)
    address, port = kube.gateway_address(cluster, settings.namespace, GATEWAY_TIMEOUT_SECONDS, settings.poll_seconds, step)
    url = f"http://{address}" + ("" if port == 80 and settings.gateway_probe_port is None
                                 else f":{settings.gateway_probe_port or port}")
    heading(f"checking the gateway through the load balancer: {url}/healthz")
    kube.wait_for_gateway_health(url, HEALTH_TIMEOUT_SECONDS, settings.poll_seconds, step)
    heading(f"Visage is up: {url}/  (gRPC: grpcurl -plaintext {address}:{port} list)")
    print(f"{url}/")
    return 0


def run_destroy(settings: DeploySettings, credential) -> int:
    heading(f"removing what this deployment made in resource group {settings.resource_group}")
    azure_resources.destroy(AzureClients.connect(settings, credential), settings, step)
    heading("done")
    return 0


def run_remove(settings: DeploySettings, credential) -> int:
    """Only the Kubernetes objects the deploy made (label-checked); the cluster and store stay."""
    clients = AzureClients.connect(settings, credential)
    live = azure_resources.live_state(clients, settings)
    if not live["AKS cluster"]:
        heading(f"no cluster {settings.cluster}: nothing to remove")
        return 0
    heading(f"removing Visage's Kubernetes objects from namespace {settings.namespace} (the cluster stays)")
    cluster = kube.Cluster.with_token(*azure_resources.kubernetes_credentials(clients, settings, credential, live, step))
    kube.undeploy(cluster, settings.namespace, step)
    heading("done")
    return 0


def run_push(settings: DeploySettings, credential) -> int:
    """Local `docker build` + `docker push` for subscriptions without ACR Tasks."""
    settings.validate()
    context = images.build_context(faces_dir=settings.faces_dir)
    heading(f"building and pushing {len(context.images)} images with the local Docker (tag {context.tag})")
    with tempfile.TemporaryDirectory() as workdir:
        images.push_locally(settings, context, step, Path(workdir))
    heading("pushed; now run `VISAGE_AZ_SKIP_IMAGE_BUILD=1 make deploy`")
    return 0


COMMANDS = {"plan": run_plan, "apply": run_apply, "destroy": run_destroy, "remove": run_remove, "push": run_push}


def default_credential(settings: DeploySettings, command: str):
    if not settings.subscription_id:
        if command in ("plan", "push"):
            return None
        raise DeployError("AZURE_SUBSCRIPTION_ID is not set: export it (see `az account show --query id`)")
    from azure.identity import DefaultAzureCredential  # imported late: plan works without it configured
    return DefaultAzureCredential()


def main(argv: list[str] | None = None, credential=None, settings: DeploySettings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visage_deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--overlay", choices=OVERLAYS, help="kustomize overlay (default $VISAGE_AZ_OVERLAY or dev)")
    args = parser.parse_args(argv)
    try:
        settings = settings or DeploySettings.from_env(args.overlay)
        credential = credential or default_credential(settings, args.command)
        return COMMANDS[args.command](settings, credential)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - SDK errors outside our wrappers still get a readable line
        if type(error).__module__.startswith("azure."):
            print(f"error: {explain(error, args.command, settings.location if settings else '?')}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
