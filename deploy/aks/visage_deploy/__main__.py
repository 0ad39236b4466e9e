"""`python -m visage_deploy {plan,apply,destroy}`: the whole AKS deployment.

plan    prints what apply would create or change (works without credentials:
        then it shows the full desired state, compared with nothing)
apply   creates or updates the resource group, registry, cluster, static IP with its DNS
        name, Key Vault (keys, certificate), store, images and Kubernetes objects, changing
        only what differs; checks the https address end to end and prints it with a
        short-lived admin sign-in link
destroy deletes what apply created: the resource group if apply made it, else
        only the resources tagged with this deployment; asks before deleting a store
        (--yes: do; --keep-store: keep the Cosmos DB account)
remove  deletes only the Kubernetes objects apply made (keeps the cluster and store)
sign-in prints a new short-lived admin sign-in link (local issuer)
push    builds and pushes the images with the local Docker (where ACR Tasks are
        not allowed); then apply with VISAGE_AZ_SKIP_IMAGE_BUILD=1"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from visage_deploy import azure_resources, cost, final_check, images, kube
from visage_deploy.azure_resources import AzureClients
from visage_deploy.errors import DeployError, explain
from visage_deploy.settings import OVERLAYS, DeploySettings

GATEWAY_TIMEOUT_SECONDS = 600   # for Azure to give the load balancer a public IP
HEALTH_TIMEOUT_SECONDS = 300    # for /healthz to answer 200 through it
JOB_TIMEOUT_SECONDS = 1800      # the demo loader's activeDeadlineSeconds
SIGN_IN_LINK_SECONDS = 3600     # the admin sign-in link printed at the end
CHECK_TOKEN_SECONDS = 600       # the token of the last check


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
    heading("how people reach it")
    for line in access_summary(settings):
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
    versions = azure_resources.current_versions(clients, settings, credential, live) if live and live["Key Vault"] else {}
    objects = kube.customize(kube.render(settings.overlay, settings.kustomize), settings, refs,
                             planned_vault(settings, live, versions))
    objects = without_loader(objects, refs, settings)
    cluster = None
    if live and live["AKS cluster"]:
        cluster = kube.Cluster.with_token(*azure_resources.kubernetes_credentials(
            clients, settings, credential, live, step, grant=False))
    for obj, change in kube.plan(cluster, objects):
        step(change.line() if obj["kind"] != "Secret" else change.line().split(" (")[0])
    return 0


def access_summary(settings: DeploySettings) -> list[str]:
    """The address, its certificate, who signs the tokens and where the faces are kept."""
    certificate = {"self-signed": "self-signed by Key Vault's certificate policy (browsers warn: import it, or "
                                  "use VISAGE_AZ_CERTIFICATE=file / acme)",
                   "acme": f"from the Key Vault certificate issuer {settings.acme_issuer}",
                   "file": f"yours, imported into Key Vault from {settings.certificate_file}"}[settings.certificate]
    name = (f"{settings.hostname} (your DNS name: point its A record at the static IP)" if settings.hostname
            else f"{settings.azure_fqdn} (Azure DNS label {settings.dns_label_name})")
    identity = ("Microsoft Entra ID: tokens from " + settings.cassandra_env.get("VISAGE_AUTH_ISSUER", "?")
                if settings.identity_mode == "entra" else
                f"the local issuer: one Ed25519 key, generated once into Key Vault {settings.key_vault}; "
                "an admin sign-in link is printed at the end")
    store = {"in-cluster": "Apache Cassandra in the cluster (its disk goes with the cluster)",
             "cosmos": f"Cosmos DB for Apache Cassandra {settings.cosmos_account}",
             "external": f"your Cassandra at {settings.cassandra_env.get('VISAGE_CASSANDRA_HOSTS', '?')}"}[settings.store_kind]
    return [f"  address        https://{settings.public_hostname}/  (static public IP {settings.public_ip}; "
            "http redirects to https)",
            f"  name           {name}",
            f"  certificate    {certificate}",
            f"  identity       {identity}",
            f"  store          {store}"]


def planned_vault(settings: DeploySettings, live: dict | None, versions: dict[str, str]) -> dict:
    """What provision_vault will return, as far as it is known before apply (for the plan)."""
    identity = ((live or {}).get("workload identity") or {}).get("properties", {})
    secrets = {name: variable for variable, name in azure_resources.SECRET_OBJECTS.items()
               if name in azure_resources.vault_secret_names(settings)}
    endpoint = ({"hosts": f"{settings.cosmos_account}.cassandra.cosmos.azure.com", "port": "10350"}
                if settings.store_kind == "cosmos" else {})
    return {**endpoint, "client_id": identity.get("clientId", "(workload identity's client id)"),
            "tenant_id": identity.get("tenantId", "(tenant)"), "key_vault": settings.key_vault, "secrets": secrets,
            "versions": versions, "local_issuer": settings.identity_mode == "local",
            "certificate": azure_resources.CERTIFICATE}


def without_loader(objects: list[dict], refs: dict[str, str], settings: DeploySettings) -> list[dict]:
    """No loader image (no demo photos) → no demo-loader Job. With Entra ID the loader could get no token
    (its workload identity would need an app role on your Entra app): left out, `visage ingest` loads."""
    if "loader" in refs and settings.identity_mode == "local":
        return objects
    return [obj for obj in objects if obj["kind"] != "Job"]


def run_apply(settings: DeploySettings, credential) -> int:
    settings.validate()  # before anything exists: a wrong setting costs nothing
    rendered = kube.render(settings.overlay, settings.kustomize)
    context = images.build_context(faces_dir=settings.faces_dir)
    clients = AzureClients.connect(settings, credential)
    heading(f"Azure ({settings.location}, resource group {settings.resource_group})")
    live = azure_resources.apply(clients, settings, step)
    heading(f"Key Vault {settings.key_vault}: store credentials, token keys, the certificate for "
            f"{settings.public_hostname}")
    vault = azure_resources.provision_vault(clients, settings, credential, live, step)
    heading("images")
    refs = images.build_all(clients, settings, context, step)
    heading(f"Kubernetes objects (overlay {settings.overlay}, store {settings.store_kind})")
    cluster = kube.Cluster.with_token(*azure_resources.kubernetes_credentials(clients, settings, credential, live, step))
    kube.wait_for_access(cluster, GATEWAY_TIMEOUT_SECONDS, settings.poll_seconds, step)
    objects = without_loader(kube.customize(rendered, settings, refs, vault), refs, settings)
    kube.apply(cluster, objects, step)
    kube.admit_pods(cluster, objects)
    heading("waiting for every Deployment to roll out and every Job to finish")
    kube.wait_for_rollouts(cluster, objects, settings.rollout_timeout, settings.poll_seconds, step)
    kube.wait_for_jobs(cluster, objects, JOB_TIMEOUT_SECONDS, settings.poll_seconds, step)
    kube.gateway_address(cluster, settings.namespace, GATEWAY_TIMEOUT_SECONDS, settings.poll_seconds, step)
    target = final_check.Target(settings.public_hostname, settings.gateway_probe_port or 443,
                                settings.gateway_redirect_probe_port or 80, settings.gateway_probe_address)
    url = f"https://{target.hostname}" + ("" if target.https_port == 443 else f":{target.https_port}")
    heading(f"checking {url} as a person would: an authenticated read of the store and a Classify")
    done = final_check.check(target, vault["certificate_pem"], check_token(settings, credential, vault),
                             final_check.shared_photo(settings.faces_dir), HEALTH_TIMEOUT_SECONDS,
                             settings.poll_seconds, step)
    step(f"  {done}")
    heading(f"Visage is up: {url}/  (address {live['public IP']['properties'].get('ipAddress', '?')})")
    if vault["signing_key"]:
        token = azure_resources.admin_token(vault["signing_key"], SIGN_IN_LINK_SECONDS)
        step(f"  sign in as admin (valid {SIGN_IN_LINK_SECONDS // 60} min; `make deploy-sign-in` makes a new one):")
        print(f"{url}/#token={token}")
    else:
        step("  sign in with your organisation's account (Microsoft Entra ID)")
        print(f"{url}/")
    return 0


def check_token(settings: DeploySettings, credential, vault: dict) -> str:
    """The last check's token: from the deployment's local issuer, or the deployer's own Entra ID token
    for the Visage app (the deployer needs one of its app roles)."""
    if vault["signing_key"]:
        return azure_resources.admin_token(vault["signing_key"], CHECK_TOKEN_SECONDS)
    audience = settings.cassandra_env["VISAGE_AUTH_AUDIENCE"]
    return credential.get_token(f"{audience.rstrip('/')}/.default").token


def run_destroy(settings: DeploySettings, credential, yes: bool = False, keep_store: bool = False) -> int:
    heading(f"removing what this deployment made in resource group {settings.resource_group}")
    azure_resources.destroy(AzureClients.connect(settings, credential), settings, step,
                            confirm=lambda question: yes or ask(question), keep_store=keep_store)
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


def run_sign_in(settings: DeploySettings, credential) -> int:
    """A new short-lived admin sign-in link, signed with the deployment's key in Key Vault."""
    if settings.identity_mode != "local":
        raise DeployError("people sign in with Microsoft Entra ID here: there is no local key to sign a link")
    clients = AzureClients.connect(settings, credential)
    live = azure_resources.live_state(clients, settings)
    if not live["Key Vault"]:
        raise DeployError(f"no Key Vault {settings.key_vault}: run `make deploy` first")
    signing_key = azure_resources.vault_client(settings, credential, live, step).secret(azure_resources.SIGNING_KEY_SECRET)
    if not signing_key:
        raise DeployError(f"Key Vault {settings.key_vault} holds no signing key: run `make deploy` first")
    token = azure_resources.admin_token(signing_key, SIGN_IN_LINK_SECONDS)
    heading(f"sign in as admin (valid {SIGN_IN_LINK_SECONDS // 60} min)")
    print(f"https://{settings.public_hostname}/#token={token}")
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


def ask(question: str) -> bool:
    """Yes only when a person at a terminal types it; scripts pass --yes."""
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


COMMANDS = {"sign-in": run_sign_in, "plan": run_plan, "apply": run_apply, "destroy": run_destroy, "remove": run_remove, "push": run_push}


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
    parser.add_argument("--yes", action="store_true", help="destroy: delete the store without asking")
    parser.add_argument("--keep-store", action="store_true", help="destroy: keep the Cosmos DB account")
    args = parser.parse_args(argv)
    try:
        settings = settings or DeploySettings.from_env(args.overlay)
        credential = credential or default_credential(settings, args.command)
        if args.command == "destroy":
            return run_destroy(settings, credential, yes=args.yes, keep_store=args.keep_store)
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
