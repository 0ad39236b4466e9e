"""Container images, built in Azure by ACR Tasks (what `az acr build` does):
the build context is packed into a reproducible tar, uploaded to the URL the
registry hands out, and one DockerBuildRequest run is scheduled per image.

Images are tagged with the context's content hash, so an unchanged tree is
never rebuilt: a succeeded run whose outputs hold that repository and tag (ACR
reports each as registry/repository/tag/digest) means the digest exists.

Where ACR Tasks are not allowed (TasksOperationsNotAllowed), `python -m
visage_deploy push` builds the same context with a local Docker and pushes it;
then VISAGE_AZ_SKIP_IMAGE_BUILD=1 makes `apply` use those tags as they are."""
from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from azure.core.exceptions import HttpResponseError
from tqdm import tqdm

from visage_deploy.azure_resources import AzureClients
from visage_deploy.diff import Change
from visage_deploy.errors import DeployError, explain
from visage_deploy.settings import IMAGES, REPO, DeploySettings

DOCKER_DIR = "deploy/aks/docker"
DEMO_FACES = "demo-faces"  # where the shared photos sit inside the build context
# Generated, so ignored by git, but the gateway image serves it as /openapi.json.
GENERATED = ("build/openapi.json",)
TERMINAL = {"Succeeded", "Failed", "Canceled", "Error", "Timeout"}
BUILD_TIMEOUT_SECONDS = 3600

Step = Callable[[str], None]


@dataclass(frozen=True)
class BuildContext:
    archive: bytes   # .tar.gz
    tag: str         # content hash of the files in it
    has_demo_faces: bool = False

    @property
    def images(self) -> tuple[str, ...]:
        """What this context can build: no demo photos (a fresh clone) → no loader image."""
        return IMAGES if self.has_demo_faces else tuple(image for image in IMAGES if image != "loader")


def context_files(repo: Path = REPO) -> list[str]:
    """Tracked and untracked-but-not-ignored files: .venv, build/ and the
    generated code stay out (the image generates its own code)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                            capture_output=True, check=True).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (repo / name).is_file())


def build_context(repo: Path = REPO, faces_dir: Path | None = None) -> BuildContext:
    """Same files in → same bytes and tag out (fixed mtimes, owners, order)."""
    entries = [(name, repo / name) for name in context_files(repo)]
    for name in GENERATED:
        if not (repo / name).is_file():
            raise DeployError(f"{name} is missing: run `make openapi` (make deploy does)")
        entries.append((name, repo / name))
    faces = sorted(path for path in faces_dir.rglob("*") if path.is_file()) if faces_dir is not None else []
    if faces:
        entries += [(f"{DEMO_FACES}/{path.relative_to(faces_dir)}", path) for path in faces]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tag = hashlib.sha256(raw.getvalue()).hexdigest()[:16]
    return BuildContext(gzip.compress(raw.getvalue(), mtime=0), tag, has_demo_faces=bool(faces))


def image_ref(settings: DeploySettings, image: str, tag: str) -> str:
    return f"{settings.registry}.azurecr.io/visage-{image}:{tag}"


def _already_built(clients: AzureClients, settings: DeploySettings, image: str, tag: str) -> bool:
    """A succeeded run pushed visage-IMAGE:TAG. Run outputs name images by digest, so the
    `OutputImageManifests` filter (repository@sha256:...) cannot find a tag: match the fields."""
    runs = clients.tasks.runs.list(settings.resource_group, settings.registry, filter="Status eq 'Succeeded'")
    return any(output.get("repository") == f"visage-{image}" and output.get("tag") == tag
               for run in runs for output in (dict(run).get("outputImages") or []))


def plan(clients: AzureClients | None, settings: DeploySettings, context: BuildContext) -> list[Change]:
    if settings.skip_image_build:
        return [Change("image", f"visage-{image}:{context.tag}", "unchanged") for image in context.images]
    if clients is None:
        return [Change("image", f"visage-{image}:{context.tag}", "create") for image in context.images]
    try:
        return [Change("image", f"visage-{image}:{context.tag}",
                       "unchanged" if _already_built(clients, settings, image, context.tag) else "create")
                for image in context.images]
    except HttpResponseError as error:
        if error.status_code == 404:  # registry not there yet
            return [Change("image", f"visage-{image}:{context.tag}", "create") for image in context.images]
        raise explain(error, "list image builds", settings.location) from error


def build_all(clients: AzureClients, settings: DeploySettings, context: BuildContext, step: Step) -> dict[str, str]:
    """Builds what is missing; returns image name → full reference."""
    changes = plan(clients, settings, context)
    missing = [change.name.split(":")[0].removeprefix("visage-") for change in changes if change.action == "create"]
    for change in changes:
        step(change.line())
    if not context.has_demo_faces:
        step("  no demo photos (VISAGE_FACES_DIR): no loader image and no demo-loader Job")
    if missing:
        source = upload_context(clients, settings, context, step)
        # The loader starts FROM the ingest image, so it waits for the first wave.
        first = [image for image in missing if image != "loader"]
        _wait(clients, settings, [_schedule(clients, settings, source, image, context.tag) for image in first], step)
        if "loader" in missing:
            _wait(clients, settings, [_schedule(clients, settings, source, "loader", context.tag)], step)
    return {image: image_ref(settings, image, context.tag) for image in context.images}


def docker_commands(settings: DeploySettings, context: BuildContext, archive: Path) -> list[list[str]]:
    """`docker build` + `docker push` of every image from the same context ACR Tasks would get."""
    commands = [["az", "acr", "login", "--name", settings.registry]]
    for image in context.images:
        ref = image_ref(settings, image, context.tag)
        commands.append(["docker", "build", "-f", f"{DOCKER_DIR}/{image}.Dockerfile", "-t", ref,
                         "--build-arg", f"INGEST_IMAGE={image_ref(settings, 'ingest', context.tag)}", "-"])
        commands.append(["docker", "push", ref])
    return commands


def push_locally(settings: DeploySettings, context: BuildContext, step: Step, workdir: Path) -> None:
    """The documented alternative to ACR Tasks: build with the local Docker daemon and push."""
    archive = workdir / f"visage-context-{context.tag}.tar.gz"
    archive.write_bytes(context.archive)
    for command in docker_commands(settings, context, archive):
        step("  $ " + " ".join(command) + (f" < {archive}" if command[-1] == "-" else ""))
        with archive.open("rb") as stdin:
            subprocess.run(command, stdin=stdin if command[-1] == "-" else None, check=True)


def upload_context(clients: AzureClients, settings: DeploySettings, context: BuildContext, step: Step) -> str:
    try:
        target = clients.tasks.registries.get_build_source_upload_url(settings.resource_group, settings.registry)
    except HttpResponseError as error:
        raise explain(error, "get a build upload URL", settings.location) from error
    step(f"  uploading build context ({len(context.archive) / 1e6:.1f} MB)")
    response = requests.put(target["uploadUrl"], data=context.archive, timeout=600,
                            headers={"x-ms-blob-type": "BlockBlob"}, verify=settings.connection_verify)
    if response.status_code >= 300:
        raise DeployError(f"uploading the build context failed: HTTP {response.status_code} {response.text[:200]}")
    return target["relativePath"]


def _schedule(clients: AzureClients, settings: DeploySettings, source: str, image: str, tag: str) -> str:
    request = {
        "type": "DockerBuildRequest", "sourceLocation": source, "isPushEnabled": True,
        "imageNames": [f"visage-{image}:{tag}"], "dockerFilePath": f"{DOCKER_DIR}/{image}.Dockerfile",
        "platform": {"os": "Linux", "architecture": "amd64"}, "timeout": BUILD_TIMEOUT_SECONDS,
        "arguments": [{"name": "INGEST_IMAGE", "value": image_ref(settings, "ingest", tag), "isSecret": False}],
    }
    try:
        run = clients.tasks.registries.schedule_run(settings.resource_group, settings.registry, request)
    except HttpResponseError as error:
        raise explain(error, f"schedule the build of visage-{image}", settings.location) from error
    return run["runId"]


def _wait(clients: AzureClients, settings: DeploySettings, run_ids: list[str], step: Step) -> None:
    pending, failed = set(run_ids), []
    with tqdm(total=len(run_ids), desc="building images", unit="image") as bar:
        while pending:
            for run_id in sorted(pending):
                run = clients.tasks.runs.get(settings.resource_group, settings.registry, run_id)
                if run["status"] in TERMINAL:
                    pending.discard(run_id)
                    bar.update(1)
                    if run["status"] != "Succeeded":
                        failed.append(f"{run_id} ({run['status']})")
            if pending:
                time.sleep(settings.poll_seconds)
    if failed:
        raise DeployError(f"image build failed: runs {', '.join(failed)}; see their logs with "
                          f"`az acr task logs -r {settings.registry} --run-id RUN_ID`")
    step(f"  built {len(run_ids)} image(s)")
