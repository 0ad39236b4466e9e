"""Deploy-area fixtures: kustomize, the rendered overlays, and a local fake of
Azure Resource Manager + the cluster's Kubernetes API (no real Azure)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

from visage_deploy import kube
from visage_deploy.settings import OVERLAYS, REPO, DeploySettings

from tests.conftest import missing_prerequisite
from tests.deploy.fake_azure import FakeAzure

KUSTOMIZE = REPO / ".tools" / "bin" / "kustomize"
CHECKOV = REPO / ".tools" / "checkov-venv" / "bin" / "checkov"


class StaticTokenCredential:
    """A TokenCredential that never talks to Entra ID."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("test-arm-token", int(time.time()) + 3600)


@pytest.fixture(scope="session")
def kustomize() -> Path:
    if not KUSTOMIZE.exists():
        missing_prerequisite("kustomize is not installed", "make deploy-tools")
    return KUSTOMIZE


@pytest.fixture(scope="session")
def rendered(kustomize) -> dict[str, list[dict]]:
    return {overlay: kube.render(overlay, kustomize) for overlay in OVERLAYS}


@pytest.fixture
def fake_azure(tmp_path):
    fake = FakeAzure(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def deploy_settings(fake_azure, kustomize, tmp_path) -> DeploySettings:
    faces = tmp_path / "faces" / "bbt" / "someone"
    faces.mkdir(parents=True)
    (faces / "1.jpg").write_bytes(b"\xff\xd8 not decoded by the deploy")
    return replace(DeploySettings(), subscription_id="00000000-0000-0000-0000-000000000001",
                   arm_endpoint=fake_azure.base, poll_seconds=0.01, connection_verify=str(fake_azure.cert),
                   kustomize=kustomize, faces_dir=tmp_path / "faces", registry="visagetest")


@pytest.fixture
def credential() -> StaticTokenCredential:
    return StaticTokenCredential()
