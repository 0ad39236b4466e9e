# Gateway/UI tools: Debian's Chromium for the browser tests, Debian's h2load
# (nghttp2-client) for the gateway benchmark's C clients, a current grpcurl
# and gnostic's protoc-gen-openapi (Go module proxy) in .tools/bin, and the
# OpenAPI document build/openapi.json generated from the protos (`run` and
# `test` depend on it; `python -m visage_gateway` also regenerates it when stale).
GRPCURL_VERSION          := v1.9.4
PROTOC_GEN_OPENAPI_VERSION := v0.7.1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: chromium h2load grpcurl openapi ui-vendor keycloak

# The UI's one third-party script: oidc-client-ts's browser bundle (OpenID Connect sign-in,
# code + PKCE; jwt-decode is bundled inside it), from npm at a pinned version, committed in
# $(UI_VENDOR) with both licences and SHA256SUMS (tests/gateway/test_ui_vendor.py checks the
# file against them). Nothing is fetched when the UI runs. To update: change the versions here,
# `make ui-vendor`, read the diff, run tests/gateway/test_browser_oidc.py.
OIDC_CLIENT_TS_VERSION := 3.5.0
JWT_DECODE_VERSION     := 4.0.0
UI_VENDOR              := services/gateway/ui/vendor

ui-vendor:
	tmp=$$(mktemp -d) && cd $$tmp && \
	  npm pack --silent oidc-client-ts@$(OIDC_CLIENT_TS_VERSION) jwt-decode@$(JWT_DECODE_VERSION) >/dev/null && \
	  mkdir oidc jwt && tar xzf oidc-client-ts-$(OIDC_CLIENT_TS_VERSION).tgz -C oidc && \
	  tar xzf jwt-decode-$(JWT_DECODE_VERSION).tgz -C jwt && \
	  cp oidc/package/dist/browser/oidc-client-ts.min.js $(CURDIR)/$(UI_VENDOR)/ && \
	  cp oidc/package/LICENSE $(CURDIR)/$(UI_VENDOR)/LICENSE.oidc-client-ts && \
	  cp jwt/package/LICENSE $(CURDIR)/$(UI_VENDOR)/LICENSE.jwt-decode && rm -rf $$tmp
	cd $(UI_VENDOR) && sha256sum oidc-client-ts.min.js LICENSE.jwt-decode LICENSE.oidc-client-ts > SHA256SUMS

# A real OpenID Connect provider for the UI's sign-in tests (scripts/keycloak.py): Keycloak's
# distribution from Maven Central, unpacked once per machine into ~/.cache/visage/keycloak.
keycloak:
	python3 scripts/keycloak.py fetch

chromium:
	@test -x /usr/bin/chromium || { echo "==> Chromium from Debian, for the browser tests (apt; ~3 min)" && \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

h2load:
	@command -v h2load >/dev/null || { echo "==> h2load from Debian, for the gateway benchmark (apt; ~1 min)" && \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nghttp2-client; }

grpcurl: $(TOOLS)/bin/grpcurl
$(TOOLS)/bin/grpcurl:
	@echo "==> grpcurl from the Go module proxy (~2 min the first time)"
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(TOOLS)/bin/protoc-gen-openapi:
	@echo "==> protoc-gen-openapi from the Go module proxy (~1 min the first time)"
	GOBIN=$(TOOLS)/bin GOFLAGS=-buildvcs=false go install github.com/google/gnostic/cmd/protoc-gen-openapi@$(PROTOC_GEN_OPENAPI_VERSION)

openapi: build/openapi.json
build/openapi.json: $(PROTOS) $(DESC) $(TOOLS)/bin/protoc-gen-openapi services/gateway/openapi.py
	$(PY) -m visage_gateway.openapi $@
