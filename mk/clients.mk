# Clients for other systems: the Go and TypeScript clients generated from the protos with
# `buf generate` (clients/buf.gen.yaml) into build/clients/ (never committed), and the three
# example programs (clients/python, clients/go, clients/typescript) built against them.
# Plugins come from the Go module proxy (protoc-gen-go, protoc-gen-go-grpc) and npm
# (protoc-gen-es, Connect, TypeScript; versions pinned by clients/typescript/package-lock.json),
# installed once per machine into ~/.cache/visage/clients; Go modules go to Go's own cache.
CLIENTS_CACHE              ?= $(HOME)/.cache/visage/clients
PROTOC_GEN_GO_VERSION      := v1.36.10
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
CLIENTS_OUT                := build/clients
CLIENTS_PATH               := $(CLIENTS_CACHE)/bin:$(CLIENTS_CACHE)/npm/node_modules/.bin:$(PATH)
CLIENT_SOURCES             := clients/buf.gen.yaml clients/go/go.mod clients/go/go.sum clients/go/api.go.mod \
                              clients/go/classify/main.go clients/typescript/classify.ts \
                              clients/typescript/tsconfig.json clients/typescript/package-lock.json

.PHONY: clients client-tools

client-tools: $(CLIENTS_CACHE)/bin/protoc-gen-go $(CLIENTS_CACHE)/bin/protoc-gen-go-grpc $(CLIENTS_CACHE)/npm/.installed

$(CLIENTS_CACHE)/bin/protoc-gen-go:
	@echo "==> protoc-gen-go from the Go module proxy (~1 min the first time)"
	GOBIN=$(CLIENTS_CACHE)/bin GOFLAGS=-buildvcs=false go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(CLIENTS_CACHE)/bin/protoc-gen-go-grpc:
	@echo "==> protoc-gen-go-grpc from the Go module proxy (~1 min the first time)"
	GOBIN=$(CLIENTS_CACHE)/bin GOFLAGS=-buildvcs=false go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(CLIENTS_CACHE)/npm/.installed: clients/typescript/package.json clients/typescript/package-lock.json
	@echo "==> protoc-gen-es, Connect and TypeScript from npm (~1 min the first time)"
	mkdir -p $(CLIENTS_CACHE)/npm
	cp clients/typescript/package.json clients/typescript/package-lock.json $(CLIENTS_CACHE)/npm/
	cd $(CLIENTS_CACHE)/npm && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# Generated code, the Go example (a binary) and the TypeScript example (strict tsc, then node).
clients: $(CLIENTS_OUT)/.built
$(CLIENTS_OUT)/.built: $(DESC) $(CLIENT_SOURCES) | client-tools
	@echo "==> the Go and TypeScript clients into $(CLIENTS_OUT) (Go modules from the proxy; ~2 min the first time)"
	rm -rf $(CLIENTS_OUT) && mkdir -p $(CLIENTS_OUT)/go $(CLIENTS_OUT)/typescript
	PATH=$(CLIENTS_PATH) $(VENV)/bin/buf generate '$(DESC)#format=binpb' --template clients/buf.gen.yaml --path visage
	cp clients/go/api.go.mod $(CLIENTS_OUT)/go/go.mod
	cd clients/go && GOFLAGS=-buildvcs=false go build -o $(CURDIR)/$(CLIENTS_OUT)/bin/classify-go ./classify
	cp clients/typescript/classify.ts clients/typescript/tsconfig.json clients/typescript/package.json $(CLIENTS_OUT)/typescript/
	ln -s $(CLIENTS_CACHE)/npm/node_modules $(CLIENTS_OUT)/typescript/node_modules
	cd $(CLIENTS_OUT)/typescript && PATH=$(CLIENTS_PATH) tsc -p .
	touch $@
