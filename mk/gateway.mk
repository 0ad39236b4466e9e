# Gateway/UI tools: Debian's Chromium for the browser tests, Debian's h2load
# (nghttp2-client) for the gateway benchmark's C clients, a current grpcurl
# and gnostic's protoc-gen-openapi (Go module proxy) in .tools/bin, and the
# OpenAPI document build/openapi.json generated from the protos (`run` and
# `test` depend on it; `python -m visage_gateway` also regenerates it when stale).
GRPCURL_VERSION          := v1.9.4
PROTOC_GEN_OPENAPI_VERSION := v0.7.1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: chromium h2load grpcurl openapi

chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

h2load:
	@command -v h2load >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nghttp2-client; }

grpcurl: $(TOOLS)/bin/grpcurl
$(TOOLS)/bin/grpcurl:
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(TOOLS)/bin/protoc-gen-openapi:
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/google/gnostic/cmd/protoc-gen-openapi@$(PROTOC_GEN_OPENAPI_VERSION)

openapi: build/openapi.json
build/openapi.json: $(PROTOS) $(DESC) $(TOOLS)/bin/protoc-gen-openapi services/gateway/openapi.py
	$(PY) -m visage_gateway.openapi $@
