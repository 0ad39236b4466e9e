# Deploy to Azure Kubernetes Service (deploy/aks/README.md).
# Tools live in .tools, outside the project venv: kustomize from the Go module
# proxy, checkov in its own venv so its pins cannot clash with the project's.
KUSTOMIZE_VERSION := v5.8.2
CHECKOV_VERSION   := 3.3.30
KUSTOMIZE         := $(TOOLS)/bin/kustomize
CHECKOV_VENV      := $(TOOLS)/checkov-venv
OVERLAY           ?= dev

.PHONY: deploy deploy-plan deploy-sign-in undeploy deploy-tools kustomize checkov kube-apiserver deploy-push

$(KUSTOMIZE):
	@echo "==> kustomize from the Go module proxy (~2 min the first time)"
	mkdir -p $(TOOLS)/bin
	GOBIN=$(TOOLS)/bin GOTOOLCHAIN=local go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

$(CHECKOV_VENV)/bin/checkov:
	@echo "==> checkov into its own venv (~2 min the first time)"
	python3.11 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)

kustomize: $(KUSTOMIZE)
checkov: $(CHECKOV_VENV)/bin/checkov
deploy-tools: kustomize checkov kube-apiserver

# Needs AZURE_SUBSCRIPTION_ID and credentials DefaultAzureCredential accepts (az login, env, managed identity).
deploy: gen openapi $(KUSTOMIZE)
	$(PY) -m visage_deploy apply --overlay $(OVERLAY)

# Works without credentials: then it prints the full desired state.
deploy-plan: gen openapi $(KUSTOMIZE)
	$(PY) -m visage_deploy plan --overlay $(OVERLAY)

# Asks before deleting a store holding faces; UNDEPLOY_FLAGS=--yes (scripts) or --keep-store.
undeploy: $(STAMP)
	$(PY) -m visage_deploy destroy $(UNDEPLOY_FLAGS)

# A new short-lived admin sign-in link (the local issuer's key is in Key Vault).
deploy-sign-in: $(STAMP)
	$(PY) -m visage_deploy sign-in --overlay $(OVERLAY)

# A real kube-apiserver + etcd for tests/deploy, compiled from the Go module proxy
# (scripts/kube/*/go.mod pin the versions). Cached in ~/.cache/visage/kube, outside
# the clone: built once per machine, then every clone and test run reuses it.
kube-apiserver:
	python3 scripts/kube_apiserver.py build

# Where ACR Tasks are not allowed: build and push with the local Docker, then
# VISAGE_AZ_SKIP_IMAGE_BUILD=1 make deploy (deploy/aks/README.md).
deploy-push: gen openapi
	$(PY) -m visage_deploy push --overlay $(OVERLAY)
