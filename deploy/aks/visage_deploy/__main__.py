"""`python -m visage_deploy {plan,apply,destroy}`: the whole AKS deployment.

plan    prints what apply would create or change (works without credentials:
        then it shows the full desired state, compared with nothing)
apply   creates or updates the resource group, registry, cluster, images and
        Kubernetes objects, changing only what differs; prints the gateway URL
destroy deletes the resource group (and so everything in it)"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from visage_deploy import azure_resources, images, kube
from visage_deploy.azure_resources import AzureClients
from visage_deploy.errors import DeployError, explain
from visage_deploy.settings import OVERLAYS, DeploySettings

GATEWAY_TIMEOUT_SECONDS = 600


def step(line: str) -> None:
    tqdm.write(line)  # plays well with the image-build progress bar


def heading(text: str) -> None:
    step(f"==> {text}")


def run_plan(settings: DeploySettings, credential) -> int:
    clients = AzureClients.connect(settings, credential) if credential else None
    if clients is None:
        heading("no Azure credentials (AZURE_SUBSCRIPTION_ID unset): showing the full desired state")
    heading(f"Azure ({settings.location}, resource group {settings.resource_group})")
    live = azure_resources.live_state(clients, settings) if clients else None
    for change in azure_resources.plan(settings, live):
        step(change.line())
    context = images.build_context(faces_dir=settings.faces_dir)
    heading(f"images (tag {context.tag}, context {len(context.archive) / 1e6:.1f} MB)")
    registry_exists = bool(live and live["container registry"])
    for change in images.plan(clients if registry_exists else None, settings, context.tag):
        step(change.line())
    heading(f"Kubernetes objects (overlay {settings.overlay})")
    refs = {name: images.image_ref(settings, name, context.tag) for name in images.IMAGES}
    objects = kube.customize(kube.render(settings.overlay, settings.kustomize), settings, refs)
    cluster = None
    if live and live["AKS cluster"]:
        cluster = kube.Cluster.from_kubeconfig(azure_resources.admin_kubeconfig(clients, settings))
    for obj, change in kube.plan(cluster, objects):
        step(change.line() if obj["kind"] != "Secret" else change.line().split(" (")[0])
    return 0


def run_apply(settings: DeploySettings, credential) -> int:
    clients = AzureClients.connect(settings, credential)
    heading(f"Azure ({settings.location}, resource group {settings.resource_group})")
    azure_resources.apply(clients, settings, step)
    heading("images")
    context = images.build_context(faces_dir=settings.faces_dir)
    refs = images.build_all(clients, settings, context, step)
    heading(f"Kubernetes objects (overlay {settings.overlay})")
    cluster = kube.Cluster.from_kubeconfig(azure_resources.admin_kubeconfig(clients, settings))
    objects = kube.customize(kube.render(settings.overlay, settings.kustomize), settings, refs)
    kube.apply(cluster, objects, step)
    address = kube.gateway_address(cluster, settings.namespace, GATEWAY_TIMEOUT_SECONDS, settings.poll_seconds, step)
    heading(f"Visage is up: http://{address}/  (gRPC: grpcurl -plaintext {address}:80 list)")
    print(f"http://{address}/")
    return 0


def run_destroy(settings: DeploySettings, credential) -> int:
    heading(f"tearing down resource group {settings.resource_group}")
    azure_resources.destroy(AzureClients.connect(settings, credential), settings, step)
    heading("done")
    return 0


COMMANDS = {"plan": run_plan, "apply": run_apply, "destroy": run_destroy}


def default_credential(settings: DeploySettings, command: str):
    if not settings.subscription_id:
        if command == "plan":
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
