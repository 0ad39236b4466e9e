"""One typed settings object (visage.config) for every VISAGE_* variable: nothing else in
lib/ or services/ reads one, README's configuration table is generated from the
declarations, and the deployment sets only declared variables."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from visage import config
from visage.config import Config, SettingError

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SCANNED = ("lib", "services")
THE_READER = Path("lib/visage/config.py")
GENERATED = Path("lib/visage/v1")
VARIABLE = re.compile(r"^VISAGE_[A-Z0-9_]*$")
# The deploy tool's own settings (deploy/aks/README.md), not the services'.
DEPLOY_TOOL_OWN = re.compile(r"^VISAGE_(AZ_[A-Z0-9_]+|FACES_DIR)$")


def _is_os_attr(node: ast.AST, *names: str) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in names
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _computed(node: ast.AST | None) -> bool:
    return not (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _why(node: ast.AST) -> str | None:
    """Why `node` reads (or may read) a VISAGE_* variable, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.match(node.value):
        return f"names {node.value}"
    if (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)
            and VARIABLE.match(str(node.values[0].value))):
        return "builds a VISAGE_* name"
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault") and _is_os_attr(node.func.value, "environ", "environb")
            and node.args and _computed(node.args[0])):
        return "reads os.environ with a computed name"
    if isinstance(node, ast.Subscript) and _is_os_attr(node.value, "environ", "environb") and _computed(node.slice):
        return "reads os.environ with a computed name"
    if isinstance(node, ast.Call) and _is_os_attr(node.func, "getenv", "getenvb") and node.args \
            and _computed(node.args[0]):
        return "calls os.getenv with a computed name"
    if isinstance(node, ast.ImportFrom) and node.module == "os" \
            and {alias.name for alias in node.names} & {"environ", "getenv", "environb", "getenvb"}:
        return "imports the environment from os"
    return None


def environment_reads(root: Path) -> list[str]:
    """Every place in root's lib/ and services/ (but visage/config.py and generated code)
    that names a VISAGE_* variable or reads the environment by a computed name."""
    found = []
    for area in SCANNED:
        for path in sorted((root / area).rglob("*.py")):
            relative = path.relative_to(root)
            if relative == THE_READER or relative.is_relative_to(GENERATED):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(relative))):
                if why := _why(node):
                    found.append(f"{relative}:{node.lineno}: {why}")
    return sorted(set(found))


def readme_variables(readme: str) -> set[str]:
    """The variables README's configuration table lists (first column, full names)."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return {name for line in section.splitlines() if line.startswith("|")
            for name in re.findall(r"`(VISAGE_[A-Z0-9_]+)`", line.split("|")[1])}


def _as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


DECLARED = config.declarations()


def test_only_visage_config_reads_visage_variables():
    reads = environment_reads(REPO)
    assert not reads, ("VISAGE_* variables are read outside lib/visage/config.py: declare each there with "
                       "setting(...) and read it through Config or its part (env_name() gives a name):\n"
                       + "\n".join(reads))


def test_readme_table_is_generated_from_the_declarations():
    table = config.readme_table(README.read_text())
    assert table is not None, f"README has no generated configuration table ({config.README_BEGIN})"
    assert table == config.markdown_table(), \
        "README's configuration table is stale: run .venv/bin/python -m visage.config --write-readme README.md"


def test_every_declared_variable_is_in_the_readme_table():
    declared = {declaration.name for declaration in DECLARED}
    listed = readme_variables(README.read_text())
    assert not declared - listed, f"declared but missing from README's configuration table: {sorted(declared - listed)}"
    assert not listed - declared, f"in README's configuration table but not declared: {sorted(listed - declared)}"


def test_declarations_are_unique_and_described():
    names = [declaration.name for declaration in DECLARED]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
    for declaration in DECLARED:
        assert declaration.name.startswith("VISAGE_") and declaration.help.strip(), declaration.name
        assert declaration.type_name  # every annotation is one the reader parses


def test_unset_variables_are_the_defaults():
    assert Config.from_env({}) == Config()


@pytest.mark.parametrize("declaration", [d for d in DECLARED if d.field.default is not None], ids=lambda d: d.name)
def test_a_default_written_out_reads_back_as_itself(declaration):
    assert declaration.read({declaration.name: _as_text(declaration.field.default)}) == declaration.field.default


def test_values_are_read_into_their_parts():
    env = {"VISAGE_CASSANDRA_HOSTS": "10.0.0.1, 10.0.0.2", "VISAGE_CASSANDRA_TLS": "yes",
           "VISAGE_CASSANDRA_CONNECT_TIMEOUT_SECONDS": "45.5", "VISAGE_QUERY_PORT": "6000",
           "VISAGE_DETECTOR": "CNN", "VISAGE_AUTH_DIR": "/keys", "VISAGE_METRICS_PORT": "",
           "VISAGE_GATEWAY_ACCESS_LOG": "0", "VISAGE_GATEWAY_HOSTNAMES": "a.example, b.example",
           "VISAGE_MODEL_RETENTION": "3", "VISAGE_RECLASSIFY_LEASE_SECONDS": "2.5", "VISAGE_REPLICA_ID": "pod-1"}
    read = Config.from_env(env)
    assert read.cassandra.contact_points == ("10.0.0.1", "10.0.0.2") and read.cassandra.tls
    assert read.cassandra.connect_timeout_seconds == 45.5 and read.ports.query == 6000
    assert read.faces.detector == "cnn" and read.auth.dir == Path("/keys")
    assert read.server.metrics_port is None  # empty: the computed default (service port + 1000)
    assert not read.gateway.access_log and read.gateway.hostnames == ("a.example", "b.example")
    assert read.trainer.retention == 3 and read.classifier.lease_seconds == 2.5
    assert read.classifier.replica_id == "pod-1"
    assert config.read("VISAGE_QUERY_PORT", env) == 6000
    assert config.env_name(config.ServerSettings, "max_streams") == "VISAGE_MAX_STREAMS"


@pytest.mark.parametrize("declaration", [d for d in DECLARED if d.type_name in ("integer", "number", "boolean")],
                         ids=lambda d: d.name)
def test_a_malformed_value_names_its_variable(declaration):
    with pytest.raises(SettingError, match=f"^{declaration.name}='x1' is not "):
        Config.from_env({declaration.name: "x1"})


def test_parts_read_with_their_computed_defaults():
    from visage.auth.tokens import AuthConfig
    assert AuthConfig.from_env({"VISAGE_DATA_DIR": "/srv/visage"}).local_dir == Path("/srv/visage/auth")
    assert AuthConfig.from_env({"VISAGE_DATA_DIR": "/srv/visage", "VISAGE_AUTH_DIR": "/keys"}).local_dir == Path("/keys")
    assert AuthConfig.from_env({}, Path("/elsewhere")).local_dir == Path("/elsewhere/auth")


def test_deployments_set_only_declared_variables():
    """The manifests, images and deploy tool name service variables only as declared (a renamed
    or removed variable must not linger there, silently ignored)."""
    declared = {declaration.name for declaration in DECLARED}
    aks = REPO / "deploy" / "aks"
    named: dict[str, str] = {}
    for path in [*(aks / "k8s").rglob("*.yaml"), *(aks / "docker").glob("*"), *(aks / "visage_deploy").glob("*.py")]:
        for name in re.findall(r"\bVISAGE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            named.setdefault(name, str(path.relative_to(REPO)))
    unknown = {name: where for name, where in named.items() if name not in declared and not DEPLOY_TOOL_OWN.match(name)}
    assert not unknown, f"not declared in visage.config: {unknown}"
