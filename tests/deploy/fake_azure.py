"""A local HTTPS server that answers like Azure Resource Manager (resource
groups, ACR, ACR Tasks, AKS, Cosmos DB, Key Vault, managed identities, role
assignments, with long-running operations polled through Azure-AsyncOperation /
Location) and like the blob the build context is uploaded to. The cluster's
Kubernetes API is NOT faked: the kubeconfig it hands out points at a real
kube-apiserver (scripts/kube_apiserver.py).

Shapes follow what the real services answer, not what is convenient:
- every ARM call must name an api-version the provider knows (400 otherwise);
- ACR run outputs name images by digest (`repo@sha256:...`): `OutputImageManifests`
  filters match that form, and a run's outputImages carry registry/repository/tag/digest;
- a role assignment for the same scope, principal and role answers 409 RoleAssignmentExists,
  whatever its name;
- a registry can refuse ACR Tasks with TasksOperationsNotAllowed (free and some
  sponsored subscriptions);
- a body sent with DELETE must be valid JSON;
- GET answers what ARM stores, normalised, not the body that was sent: Cosmos DB spells its
  location "West Europe" in `locationName` and adds ids, endpoints, failover priorities and
  provisioning states; Key Vault adds `vaultUri`; a public IP gets its address and `fqdn`
  (shapes from the REST API specs' examples: azure-rest-api-specs, cosmos-db
  DatabaseAccountGet, keyvault getVault, network PublicIpAddressGet);
- a Key Vault PUT needs `accessPolicies` unless createMode is recover; a deleted vault is kept
  soft-deleted (its name stays taken: 409 ConflictError) until recovered or purged;
- every secret PUT makes a new version, and ARM never echoes a secret's value;
- Key Vault's data plane (https://<vault>.vault.azure.net: secrets read back, certificates made
  by a policy or imported) is served under /keyvault/<vault>.
Every request is recorded so tests can tell a change from a read."""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import itertools
import json
import re
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Known api-versions per resource provider (a subset of what ARM accepts; the SDK pins
# in requirements.lock use these). Anything else: InvalidApiVersionParameter, like ARM.
API_VERSIONS = {
    "microsoft.resources": {"2025-04-01", "2024-11-01", "2024-03-01"},
    "microsoft.containerregistry": {"2025-11-01", "2025-04-01", "2025-03-01-preview"},
    "microsoft.containerservice": {"2026-08-01", "2025-07-01"},
    "microsoft.authorization": {"2022-04-01"},
    "microsoft.documentdb": {"2026-03-15", "2025-04-15"},
    "microsoft.keyvault": {"2024-11-01"},
    "microsoft.managedidentity": {"2024-11-30"},
    "microsoft.network": {"2024-05-01"},
}
KEY_VAULT_DATA_API = "7.4"
LOCATION_NAMES = {"westeurope": "West Europe", "northeurope": "North Europe", "mars": "Mars"}


def certificate(common_name: str, names: list[x509.GeneralName]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def pem_of(key, cert: x509.Certificate) -> str:
    """Key Vault's PEM secret of a certificate: the key, then the certificate."""
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)).decode()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    key, cert = certificate("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeAzure:
    def __init__(self, directory: Path, kube=None):
        self.cert, key = self_signed_cert(directory)
        self.kube = kube                          # scripts/kube_apiserver.LocalKube behind the AKS cluster
        self.resources: dict[str, dict] = {}     # lower-cased ARM id → document
        self.operations: dict[str, int] = {}     # async operation → polls left before Succeeded
        self.runs: dict[str, dict] = {}
        self.uploads: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], tuple[int, str, str]] = {}  # (method, path regex) → error
        self.tasks_allowed = True
        self.deleted_vaults: dict[str, dict[str, dict]] = {}   # vault name → its resources, soft-deleted
        self.secret_values: dict[tuple[str, str], str] = {}     # (vault, secret) → current value
        self.certificates: dict[tuple[str, str], dict] = {}    # (vault, name) → Key Vault's certificate bundle
        self.certificate_pems: dict[tuple[str, str], str] = {}  # (vault, name) → key + certificate
        self.ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def mutations(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method in ("PUT", "POST", "PATCH", "DELETE")
                and not path.lower().endswith(("/listclusterusercredential", "/listkeys"))]

    def secret_writes(self, name: str) -> int:
        return sum(1 for method, path in self.mutations() if method == "PUT" and path.lower().endswith(f"/secrets/{name}"))

    def find(self, fragment: str) -> dict:
        """The one stored resource whose id contains `fragment` (lower case)."""
        fragment = fragment.lower()
        nested = ("/providers/", "/secrets/", "/federatedidentitycredentials/", "/cassandrakeyspaces/")  # children
        found = [doc for key, doc in self.resources.items() if fragment in key
                 and not any(child in key[key.index(fragment) + len(fragment):] for child in nested)]
        assert len(found) == 1, f"{len(found)} resources match {fragment}: {sorted(self.resources)}"
        return found[0]

    # -- request handling ------------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append((self.command, url.path))
                body = self._body()
                for (method, pattern), (status, code, message) in fake.failures.items():
                    if method == self.command and re.search(pattern, url.path, re.IGNORECASE):
                        return self._send(status, {"error": {"code": code, "message": message}})
                status, document, headers = fake.handle(self.command, url.path, parse_qs(url.query), body,
                                                        self.headers)
                self._send(status, document, headers)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

        return Handler

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict, dict]:
        return status, {"error": {"code": code, "message": message}}, {}

    def check_api_version(self, key: str, query: dict) -> tuple[int, dict, dict] | None:
        versions = query.get("api-version")
        if not versions:
            return self._error(400, "MissingApiVersionParameter",
                               "The api-version query parameter (?api-version=) is required for all requests.")
        providers = re.findall(r"/providers/([^/]+)/", key + "/")
        provider = providers[-1] if providers else "microsoft.resources"
        known = API_VERSIONS.get(provider, set())
        if versions[0] not in known:
            return self._error(400, "InvalidApiVersionParameter",
                               f"The api-version '{versions[0]}' is invalid. The supported versions are "
                               f"'{', '.join(sorted(known))}'.")
        return None

    def handle(self, method: str, path: str, query: dict, body: bytes, headers=None) -> tuple[int, dict | None, dict]:
        key = path.lower().rstrip("/")
        if path.startswith("/blob/"):
            self.uploads.append(len(body))
            return 201, None, {}
        if path.startswith("/keyvault/"):
            return self.key_vault_data(method, path, query, body, headers or {})
        if key.startswith("/operations/"):
            return self.poll_operation(key)
        refused = self.check_api_version(key, query)
        if refused:
            return refused
        if key.endswith("/listbuildsourceuploadurl"):
            return 200, {"uploadUrl": f"{self.base}/blob/source.tar.gz?sig=x", "relativePath": "source/1.tar.gz"}, {}
        if key.endswith("/schedulerun"):
            return self.schedule_run(key, json.loads(body))
        if key.endswith("/runs") and method == "GET":
            return 200, {"value": self.matching_runs(query.get("$filter", [""])[0])}, {}
        if "/runs/" in key and method == "GET":
            return 200, self.runs[key.rsplit("/", 1)[1]], {}
        if key.endswith("/listclusterusercredential"):
            return 200, {"kubeconfigs": [{"name": "clusterUser", "value": self.kubeconfig()}]}, {}
        if key.endswith("/listclusteradmincredential"):
            return self._error(400, "BadRequest", "Getting static credential is not allowed because this cluster "
                                                  "is set to disable local accounts.")
        if key.endswith("/listkeys") and "/microsoft.documentdb/" in key:
            return 200, {"primaryMasterKey": "cosmos-primary-key==", "secondaryMasterKey": "cosmos-secondary=="}, {}
        if "/deletedvaults/" in key:
            return self.deleted_vault(method, key)
        if method == "GET" and re.fullmatch(r"/subscriptions/[^/]+/resourcegroups/[^/]+/resources", key):
            return 200, {"value": self.resources_in(key.removesuffix("/resources"))}, {}
        if method == "GET":
            found = self.resources.get(key)
            return (200, normalised(key, found), {}) if found else self._error(404, "ResourceNotFound", path)
        if method == "PUT":
            refused = self.refuse_vault(key, json.loads(body))
            if refused:
                return refused
            return self.put(key, path, json.loads(body))
        if method == "DELETE":
            if body:
                try:
                    json.loads(body)
                except ValueError:
                    return self._error(400, "InvalidRequestContent", "The request content was invalid JSON.")
            return self.delete(key)
        return self._error(400, "BadRequest", f"{method} {path}")

    def resources_in(self, group: str) -> list[dict]:
        """Top-level resources of a group, each with its type, like GET .../resources."""
        listed = []
        for key, doc in self.resources.items():
            match = re.fullmatch(re.escape(group) + r"/providers/([^/]+)/([^/]+)/([^/]+)", key)
            if match:
                type_ = doc.get("type") or "/".join(doc["id"].split("/providers/")[1].split("/")[:2])
                listed.append({"id": doc["id"], "name": doc["name"], "type": type_, "tags": doc.get("tags") or {},
                               "location": doc.get("location", "westeurope")})
        return listed

    def _operation(self, polls: int = 1) -> str:
        operation = f"/operations/{next(self.ids)}"
        self.operations[operation] = polls
        return f"{self.base}{operation}"

    def poll_operation(self, key: str) -> tuple[int, dict, dict]:
        self.operations[key] -= 1
        if self.operations[key] >= 0:
            return 200, {"status": "InProgress"}, {}
        return 200, {"status": "Succeeded"}, {}

    def put(self, key: str, path: str, document: dict) -> tuple[int, dict, dict]:
        if "/roleassignments/" in key:
            duplicate = self.duplicate_role_assignment(key, document)
            if duplicate:
                return duplicate
        stored = {**document, "id": path, "name": path.rsplit("/", 1)[1]}
        stored.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if "/microsoft.containerregistry/registries/" in key:
            stored["properties"]["loginServer"] = f"{stored['name']}.azurecr.io"
        if "/microsoft.containerservice/managedclusters/" in key:
            stored["properties"]["identityProfile"] = {"kubeletidentity": {"objectId": "11111111-2222-3333-4444-555555555555"}}
            stored["properties"]["oidcIssuerProfile"] = {**stored["properties"].get("oidcIssuerProfile", {}),
                                                         "issuerURL": "https://westeurope.oic.prod-aks.azure.com/t/c/"}
        if "/userassignedidentities/" in key and "/federatedidentitycredentials/" not in key:
            stored["properties"].update(clientId=str(uuid_for(key, "client")), principalId=str(uuid_for(key, "principal")),
                                        tenantId="72f988bf-0000-0000-0000-000000000000")
        if "/microsoft.keyvault/vaults/" in key and "/secrets/" not in key:
            stored["properties"]["vaultUri"] = f"https://{stored['name']}.vault.azure.net/"
        if "/microsoft.documentdb/databaseaccounts/" in key:
            stored["properties"]["documentEndpoint"] = f"https://{stored['name']}.documents.azure.com:443/"
        if "/secrets/" in key:  # ARM never echoes a secret's value; each PUT is a new version
            vault, name = key.split("/vaults/")[1].split("/secrets/")
            self.secret_values[(vault, name)] = stored["properties"].pop("value")
            uri = f"https://{vault}.vault.azure.net/secrets/{name}"
            stored["properties"].update(secretUri=uri, secretUriWithVersion=f"{uri}/{uuid.uuid4().hex}",
                                        attributes={"enabled": True, "created": next(self.ids)})
        if re.search(r"/microsoft\.network/publicipaddresses/[^/]+$", key):
            label = stored["properties"].get("dnsSettings", {}).get("domainNameLabel")
            stored["properties"].update(ipAddress=f"20.{next(self.ids) % 250}.0.1", idleTimeoutInMinutes=4, ipTags=[])
            if label:
                stored["properties"]["dnsSettings"]["fqdn"] = f"{label}.{stored['location']}.cloudapp.azure.com"
        if re.search(r"/microsoft\.containerservice/managedclusters/[^/]+$", key):
            stored["identity"] = {**stored.get("identity", {}), "principalId": str(uuid_for(key, "cluster")),
                                  "tenantId": "72f988bf-0000-0000-0000-000000000000"}
        if "/microsoft.keyvault/vaults/" in key and "/secrets/" not in key and \
                stored["properties"].pop("createMode", None) == "recover":
            return self.recover_vault(key, stored)
        self.resources[key] = stored
        if "/providers/" not in key or "/roleassignments/" in key or "/secrets/" in key:  # synchronous ones
            return 201, stored, {}
        in_progress = {**stored, "properties": {**stored["properties"], "provisioningState": "Creating"}}
        status = 200 if "/microsoft.documentdb/" in key else 201  # Cosmos answers a create with 200
        return status, in_progress, {"Azure-AsyncOperation": self._operation()}

    def duplicate_role_assignment(self, key: str, document: dict) -> tuple[int, dict, dict] | None:
        scope = key.split("/providers/microsoft.authorization/roleassignments/")[0]
        def grant(properties: dict) -> tuple[str, str]:  # principal, role definition GUID
            return properties["principalId"], properties["roleDefinitionId"].rsplit("/", 1)[1].lower()

        wanted = grant(document["properties"])
        for other_key, other in self.resources.items():
            if "/roleassignments/" in other_key and other_key.startswith(scope + "/providers/microsoft.authorization"):
                if grant(other["properties"]) == wanted:
                    return self._error(409, "RoleAssignmentExists", "The role assignment already exists.")
        return None

    def delete(self, key: str) -> tuple[int, None, dict]:
        for resource in [name for name in self.resources if name == key or name.startswith(key + "/")]:
            if re.search(r"/microsoft\.keyvault/vaults/[^/]+$", resource):  # soft-deleted, with its contents
                vault = resource.rsplit("/", 1)[1]
                self.deleted_vaults[vault] = {name: doc for name, doc in self.resources.items()
                                              if name == resource or name.startswith(resource + "/")}
        for resource in [name for name in self.resources if name == key or name.startswith(key + "/")]:
            del self.resources[resource]
        return 202, None, {"Location": self._operation(), "Retry-After": "0"}

    # -- Key Vault: soft delete, recover, purge ----------------------------------------------------------------
    def refuse_vault(self, key: str, document: dict) -> tuple[int, dict, dict] | None:
        if not re.search(r"/microsoft\.keyvault/vaults/[^/]+$", key):
            return None
        properties = document.get("properties", {})
        vault = key.rsplit("/", 1)[1]
        if properties.get("createMode") == "recover":
            if vault not in self.deleted_vaults:
                return self._error(404, "SoftDeletedVaultDoesNotExist",
                                   f"A soft deleted vault with the given name {vault} does not exist.")
            return None
        if "accessPolicies" not in properties:  # required by the spec unless createMode is recover
            return self._error(400, "BadRequest", "The parameter accessPolicies is not specified.")
        if vault in self.deleted_vaults and key not in self.resources:
            return self._error(409, "ConflictError", "Exist soft deleted vault with the same name.")
        return None

    def recover_vault(self, key: str, stored: dict) -> tuple[int, dict, dict]:
        vault = key.rsplit("/", 1)[1]
        self.resources.update(self.deleted_vaults.pop(vault))
        return 200, self.resources[key], {"Azure-AsyncOperation": self._operation()}

    def deleted_vault(self, method: str, key: str) -> tuple[int, dict | None, dict]:
        vault = key.split("/deletedvaults/")[1].split("/")[0]
        if vault not in self.deleted_vaults:
            return self._error(404, "ResourceNotFound", f"deleted vault {vault}")
        if method == "POST" and key.endswith("/purge"):
            del self.deleted_vaults[vault]
            for secret in [k for k in self.secret_values if k[0] == vault]:
                del self.secret_values[secret]
            for cert in [k for k in self.certificates if k[0] == vault]:
                del self.certificates[cert]
            return 202, None, {"Location": self._operation(), "Retry-After": "0"}
        return 200, {"id": key, "name": vault, "type": "Microsoft.KeyVault/deletedVaults",
                     "properties": {"vaultId": next(iter(self.deleted_vaults[vault])), "scheduledPurgeDate": "later"}}, {}

    # -- Key Vault's data plane -------------------------------------------------------------------------------
    def key_vault_data(self, method: str, path: str, query: dict, body: bytes, headers) -> tuple[int, dict | None, dict]:
        if query.get("api-version", [""])[0] != KEY_VAULT_DATA_API:
            return self._error(400, "BadParameter", "The api-version is not supported")
        if not (headers.get("authorization") or "").startswith("Bearer "):
            return self._error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        _, _, vault, collection, name, *rest = path.lower().rstrip("/").split("/")
        if f"{vault}" not in {key.rsplit("/", 1)[1] for key in self.resources if "/microsoft.keyvault/vaults/" in key
                              and "/secrets/" not in key}:
            return self._error(404, "VaultNotFound", vault)
        if collection == "secrets" and method == "GET":
            value = self.secret_values.get((vault, name))
            return (200, {"value": value, "id": f"https://{vault}.vault.azure.net/secrets/{name}"}, {}) \
                if value is not None else self._error(404, "SecretNotFound", name)
        if collection == "certificates":
            return self.certificate_call(method, vault, name, rest, json.loads(body or b"{}"))
        return self._error(400, "BadRequest", f"{method} {path}")

    def certificate_call(self, method: str, vault: str, name: str, rest: list[str], request: dict):
        if method == "GET" and not rest:
            found = self.certificates.get((vault, name))
            return (200, found, {}) if found else self._error(404, "CertificateNotFound", name)
        if method == "GET" and rest == ["pending"]:
            return 200, {"status": "completed"}, {}
        if method == "POST" and rest == ["create"]:
            x509_props = request["policy"]["x509_props"]
            key, cert = certificate(x509_props["subject"].removeprefix("CN="),
                                    [x509.DNSName(n) for n in x509_props["sans"]["dns_names"]])
            self.store_certificate(vault, name, key, cert, request["policy"])
            return 202, {"status": "inProgress"}, {}
        if method == "POST" and rest == ["import"]:
            pem = request["value"].encode()
            key = serialization.load_pem_private_key(pem, password=None)
            cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE"):])
            policy = {"secret_props": request["policy"]["secret_props"], "issuer": {"name": "Unknown"}}
            return 200, self.store_certificate(vault, name, key, cert, policy), {}
        return self._error(400, "BadRequest", f"{method} certificates/{name}/{'/'.join(rest)}")

    def store_certificate(self, vault: str, name: str, key, cert: x509.Certificate, policy: dict) -> dict:
        der = cert.public_bytes(serialization.Encoding.DER)
        version = uuid.uuid4().hex
        bundle = {"id": f"https://{vault}.vault.azure.net/certificates/{name}/{version}",
                  "cer": base64.b64encode(der).decode(),
                  "x5t": base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("="),
                  "policy": policy, "attributes": {"enabled": True}}
        self.certificates[(vault, name)] = bundle
        self.certificate_pems[(vault, name)] = pem_of(key, cert)
        self.secret_values[(vault, name)] = pem_of(key, cert)  # a certificate's secret: what the CSI driver mounts
        return bundle

    def schedule_run(self, key: str, request: dict) -> tuple[int, dict, dict]:
        if not self.tasks_allowed:
            registry = key.split("/registries/")[1].split("/")[0]
            return self._error(400, "TasksOperationsNotAllowed",
                               f"ACR Tasks requests for the registry {registry} and "
                               "00000000-0000-0000-0000-000000000001 are not permitted. Please file an Azure "
                               "support request at http://aka.ms/azuresupport for assistance.")
        run_id = f"ca{next(self.ids)}"
        registry = key.split("/registries/")[1].split("/")[0] + ".azurecr.io"
        outputs = []
        for name in request["imageNames"]:
            repository, tag = name.split(":")
            digest = "sha256:" + hashlib.sha256(f"{name}{run_id}".encode()).hexdigest()
            outputs.append({"registry": registry, "repository": repository, "tag": tag, "digest": digest})
        self.runs[run_id] = {"runId": run_id, "status": "Running", "request": request, "outputImages": outputs}
        threading.Timer(0.05, lambda: self.runs[run_id].update(status="Succeeded")).start()
        return 200, {"runId": run_id, "status": "Queued"}, {}

    def matching_runs(self, odata_filter: str) -> list[dict]:
        """Like ACR: OutputImageManifests compares with `repository@digest`; Status with the run's."""
        manifest = re.search(r"OutputImageManifests eq '([^']+)'", odata_filter)
        status = re.search(r"Status eq '([^']+)'", odata_filter)
        runs = list(self.runs.values())
        if status:
            runs = [run for run in runs if run["status"] == status.group(1)]
        if manifest:
            runs = [run for run in runs if any(f"{out['repository']}@{out['digest']}" == manifest.group(1)
                                               for out in run["outputImages"])]
        return [{key: value for key, value in run.items() if key != "request"} for run in runs]

    def kubeconfig(self) -> str:
        """What AKS hands out for an Entra ID cluster: the server and CA, and kubelogin for the user."""
        assert self.kube is not None, "FakeAzure(kube=...) needs the local apiserver to describe"
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "aks",
                  "clusters": [{"name": "aks", "cluster": {
                      "server": self.kube.server,
                      "certificate-authority-data": base64.b64encode(self.kube.ca_file.read_bytes()).decode()}}],
                  "users": [{"name": "clusterUser", "user": {"exec": {
                      "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
                      "args": ["get-token", "--login", "devicecode", "--server-id",
                               "6dae42f8-4368-4678-94ff-3960e28e3630"]}}}],
                  "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "clusterUser"}}]}
        return base64.b64encode(yaml.safe_dump(config).encode()).decode()


def normalised(key: str, stored: dict) -> dict:
    """What ARM's GET answers for what it stored: its own spellings and the fields it adds."""
    document = json.loads(json.dumps(stored))
    if re.search(r"/microsoft\.documentdb/databaseaccounts/[^/]+$", key):
        properties, name = document["properties"], document["name"]
        document["location"] = LOCATION_NAMES.get(document["location"], document["location"])
        document["type"] = "Microsoft.DocumentDB/databaseAccounts"
        locations = [{"id": f"{name}-{loc['locationName']}", "locationName": LOCATION_NAMES.get(loc["locationName"], loc["locationName"]),
                      "documentEndpoint": f"https://{name}-{loc['locationName']}.documents.azure.com:443/",
                      "provisioningState": "Succeeded", "failoverPriority": loc.get("failoverPriority", 0),
                      "isZoneRedundant": False} for loc in properties.get("locations", [])]
        properties.update(locations=locations, readLocations=locations, writeLocations=locations[:1],
                          failoverPolicies=[{"id": loc["id"], "locationName": loc["locationName"],
                                             "failoverPriority": loc["failoverPriority"]} for loc in locations],
                          capabilities=list(reversed(properties.get("capabilities", []))),
                          consistencyPolicy={**properties.get("consistencyPolicy", {}), "maxIntervalInSeconds": 5,
                                             "maxStalenessPrefix": 100},
                          enableAutomaticFailover=False, enableMultipleWriteLocations=False, isVirtualNetworkFilterEnabled=False,
                          instanceId=str(uuid_for(key, "instance")), cassandraConnectorOffer=None)
    if re.search(r"/microsoft\.keyvault/vaults/[^/]+$", key):
        document["properties"].update(enabledForDeployment=False, enabledForDiskEncryption=False,
                                      enabledForTemplateDeployment=False, publicNetworkAccess="Enabled")
        document["type"] = "Microsoft.KeyVault/vaults"
    if re.search(r"/microsoft\.network/publicipaddresses/[^/]+$", key):
        document["location"] = document["location"].replace(" ", "").lower()
        document["etag"] = 'W/"00000000-0000-0000-0000-000000000001"'
        document["type"] = "Microsoft.Network/publicIPAddresses"
    return document


def uuid_for(key: str, role: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{key}|{role}")
