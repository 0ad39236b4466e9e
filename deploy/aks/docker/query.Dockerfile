# visage-query: python -m visage_query on gRPC port 50054 (no Envoy in this image).
# Build context: the repository root plus build/openapi.json (python -m visage_deploy packs it).
# Base pinned by digest (refresh: docker buildx imagetools inspect python:3.11-slim-bookworm).
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# make: the build runs the project's own `make gen`.
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies before source: these layers are reused until pyproject.toml or requirements.lock
# change. Only this role's packages (deploy/aks/docker/role_requirements.py), pinned by the lock.
COPY pyproject.toml requirements.lock deploy/aks/docker/role_requirements.py ./
RUN python role_requirements.py query pyproject.toml > role.txt \
 && python -m venv /opt/visage && /opt/visage/bin/pip install -c requirements.lock -r role.txt \
 && python -m venv .venv && .venv/bin/pip install -c requirements.lock grpcio-tools mypy-protobuf googleapis-common-protos
# Source last. Generated code comes from `make gen` here (never from the host); the code
# generators' venv is marked installed so make does not pull the dev extras.
COPY Makefile ./
COPY protos protos
COPY lib lib
COPY services services
COPY deploy/aks/visage_deploy deploy/aks/visage_deploy
RUN touch .venv/.installed && make gen && /opt/visage/bin/pip install --no-deps .

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
RUN groupadd --gid 10001 visage && useradd --uid 10001 --gid visage --no-create-home --shell /usr/sbin/nologin visage
COPY --from=build /opt/visage /opt/visage
ENV PATH=/opt/visage/bin:$PATH PYTHONUNBUFFERED=1 VISAGE_HOST=0.0.0.0 VISAGE_DATA_DIR=/data
WORKDIR /data
USER 10001:10001
EXPOSE 50054
# Kubernetes uses its native gRPC probes; this serves plain Docker/compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD ["python", "-m", "visage_deploy.healthcheck", "127.0.0.1:50054"]
ENTRYPOINT ["python", "-m", "visage_query"]
