# Gateway/UI tools: Debian's Chromium for the browser tests, a current grpcurl
# and gnostic's protoc-gen-openapi (Go module proxy) in .tools/bin, and the
# OpenAPI document build/openapi.json generated from the protos.
# The lead adds `openapi` as a prerequisite of `run` and `test`; until then
# `python -m visage_gateway` regenerates build/openapi.json itself when stale.
GRPCURL_VERSION          := v1.9.4
PROTOC_GEN_OPENAPI_VERSION := v0.7.1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: chromium grpcurl openapi

chromium:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

grpcurl: $(TOOLS)/bin/grpcurl
$(TOOLS)/bin/grpcurl:
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(TOOLS)/bin/protoc-gen-openapi:
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/google/gnostic/cmd/protoc-gen-openapi@$(PROTOC_GEN_OPENAPI_VERSION)

openapi: build/openapi.json
build/openapi.json: $(PROTOS) $(DESC) $(TOOLS)/bin/protoc-gen-openapi services/gateway/openapi.py
	$(PY) -m visage_gateway.openapi $@
