"""`python -m visage_gateway`: writes the Envoy config for this Config,
validates it, then runs Envoy and stays up waiting on it (Envoy started from a
process that exits gets SIGTERM). SIGTERM/SIGINT stop Envoy; the exit code is
Envoy's."""
from __future__ import annotations

import logging
import sys

from visage import placement
from visage.auth.local import LocalIssuer
from visage.config import Config
from visage.server import setup_logging
from visage_gateway import envoy_config
from visage.datadir import secure_tree
from visage_gateway.supervisor import EnvoyProcess, ensure_openapi

log = logging.getLogger("visage_gateway")


def main() -> int:
    setup_logging("gateway")
    cpus = placement.cpus_from_env(placement.GATEWAY_CPUS_ENV)
    config = Config.from_env()
    settings = envoy_config.GatewaySettings.from_config(config)
    secure_tree(config.data_dir)  # 0700 / 0600 (the generated Envoy config lands there too)
    if settings.auth.is_local:
        LocalIssuer(settings.auth).ensure()  # Envoy reads its JWKS when it starts
    if not settings.descriptor_set.is_file():
        log.error("descriptor set %s is missing: run `make gen`", settings.descriptor_set)
        return 2
    ensure_openapi(settings.openapi_json)
    bootstrap = envoy_config.write_bootstrap(settings, config.data_dir / "gateway" / "envoy.json")
    envoy = EnvoyProcess(bootstrap, cpus)
    envoy.validate()
    log.info("gateway on http://%s:%d/ (REST /v1, /openapi.json, UI at /)%s", settings.bind_host, settings.port,
             f", Envoy on CPUs {sorted(cpus)}" if cpus else "")
    return envoy.run_until_signalled()


if __name__ == "__main__":
    sys.exit(main())
