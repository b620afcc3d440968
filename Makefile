# subsegment_exporter — `make demo` shows it, `make test` proves it.

GO        ?= go
BINARY    := subsegment_exporter
PKG       := github.com/subsegment/subsegment_exporter
# A release is the commit tagged v$(cat VERSION); anything else is a
# development build after it (0.2.0+dev.<revision>, which Debian sorts after
# 0.2.0).
RELEASE   := $(shell cat VERSION)
VERSION   ?= $(or $(patsubst v%,%,$(shell git describe --tags --exact-match --match 'v*' 2>/dev/null)),$(RELEASE)+dev.$(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown))
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH    ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -X github.com/prometheus/common/version.Version=$(VERSION) \
             -X github.com/prometheus/common/version.Revision=$(REVISION) \
             -X github.com/prometheus/common/version.Branch=$(BRANCH) \
             -X github.com/prometheus/common/version.BuildUser=$(shell id -un)@$(shell hostname) \
             -X github.com/prometheus/common/version.BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
# Time each fuzz target runs in `make test` (go test -fuzztime syntax).
FUZZTIME  ?= 10s
# Debian packages the integration tests run for real (stress-ng loads a hop,
# iptables drops packets inside the tests' network namespaces; HAProxy,
# nginx and Apache are the HTTP chain's proxies; Chromium loads the chain
# page; tshark decodes our STAMP packets with Wireshark's own dissector).
TEST_PACKAGES := prometheus prometheus-alertmanager snmpd snmp nagios4-core haproxy nginx apache2 chromium fonts-dejavu-core jsonnet stress-ng iptables iproute2 util-linux systemd man-db binutils curl python3 tshark
# golangci-lint, from the Go module proxy, pinned.
GOLANGCI_LINT_VERSION := v2.15.0
GOBIN ?= $(shell $(GO) env GOPATH)/bin
GOLANGCI_LINT := $(GOBIN)/golangci-lint
# nfpm builds the Debian package (`make package`), from the Go module proxy,
# pinned (later releases pull modules the proxy does not serve).
NFPM_VERSION := v2.45.0
NFPM := $(GOBIN)/nfpm
# The static binary the package and the Dockerfile ship (promu's layout).
GOARCH_HOST := $(shell $(GO) env GOARCH)
BUILD_DIR := .build/linux-$(GOARCH_HOST)
DEB := dist/prometheus-subsegment-exporter_$(VERSION)_$(GOARCH_HOST).deb
# Debian packages the benchmarks compare against.
BENCH_PACKAGES := haproxy socat prometheus-blackbox-exporter nginx stress-ng gcc curl python3 util-linux openssl

.PHONY: all build static package package-test demo test deps screenshot bench-deps check-format vet lint unit fuzz bench clean mixins mixin-check docs

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BINARY) ./cmd/$(BINARY)

## static: the statically linked binary of .build/linux-<arch>/, as promu builds it (the Dockerfile copies it).
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BUILD_DIR)/$(BINARY) ./cmd/$(BINARY)

## package: the Debian package in dist/ (nfpm): binary, man page, example config, systemd units.
package: static
	@if ! $(GO) version -m $(NFPM) 2>/dev/null | grep -q "nfpm/v2[[:space:]]*$(NFPM_VERSION)[[:space:]]"; then \
	  echo "make package: installing nfpm $(NFPM_VERSION)"; \
	  GOFLAGS= $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION); \
	fi
	rm -rf .build/package && mkdir -p .build/package dist
	cp $(BUILD_DIR)/$(BINARY) .build/package/
	$(BUILD_DIR)/$(BINARY) --help-man | gzip -9n >.build/package/$(BINARY).1.gz
	GOARCH=$(GOARCH_HOST) PACKAGE_VERSION=$(VERSION) \
	  $(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DEB)

## package-test: install the package with dpkg, run what it installed, verify its units, remove it.
package-test: package
	scripts/package-test.sh $(DEB) $(VERSION) $(BUILD_DIR)/$(BINARY)

## demo: build, start a local chain with one slow segment and the exporter, print what to open.
demo: build
	./$(BINARY) demo

## test: install what the tests need, then every check CI runs.
test: deps check-format vet lint mixin-check unit fuzz package-test

# Installs the Debian packages the integration tests start, when missing.
deps:
	@missing=""; for p in $(TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: missing Debian packages:$$missing — run as root (apt-get install -y$$missing)"; exit 1; fi; \
	  echo "make deps: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# make deps: the tests start their own servers; packages must not start theirs\nexit 101\n' >/usr/sbin/policy-rc.d; \
	    chmod 755 /usr/sbin/policy-rc.d; policy=1; \
	  fi; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; status=$$?; \
	  [ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; \
	  exit $$status; \
	fi

## screenshot: redraw docs/chain-page.png from the demo, in headless Chromium (the README shows it).
screenshot:
	UPDATE_SCREENSHOT=1 $(GO) test -count=1 -run '^TestDemo$$' ./integration

## docs: the documentation's tests alone: links, markers, examples, flag and metric tables (docs/development.md).
docs:
	$(GO) test -count=1 ./docs ./cmd/$(BINARY)
	$(GO) test -count=1 -run '^TestDoc' ./integration

## mixins: render alerts.yaml, rules.yaml and the dashboard from the jsonnet mixin.
mixins:
	mixins/generate.sh

# The checked-in mixin output must be what the jsonnet renders, the jsonnet
# must be jsonnetfmt-clean, the rules must load, and their unit tests pass.
mixin-check:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	mixins/generate.sh $$tmp && \
	diff -ru --exclude=README.md --exclude=tests --exclude=alertmanager --exclude='*.libsonnet' --exclude=generate.sh --exclude=alerts --exclude=rules --exclude=dashboards $$tmp mixins \
	  || { echo "mixins/ is stale: run 'make mixins' and commit the result"; exit 1; }
	@bad=$$(for f in $$(find mixins -name '*.libsonnet' -o -name '*.jsonnet'); do jsonnetfmt --test $$f >/dev/null 2>&1 || echo $$f; done); \
	  if [ -n "$$bad" ]; then echo "jsonnetfmt would change: $$bad (run jsonnetfmt -i on them)"; exit 1; fi
	promtool check rules mixins/rules.yaml mixins/alerts.yaml
	promtool test rules mixins/tests/*.yaml
	amtool check-config mixins/alertmanager/alertmanager.yml

bench-deps:
	@$(MAKE) --no-print-directory deps TEST_PACKAGES="$(BENCH_PACKAGES)"

check-format:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# golangci-lint v2 (errcheck, govet, staticcheck, revive; .golangci.yml):
# installed at the pinned version when missing or different.
lint:
	@if ! $(GOLANGCI_LINT) version 2>/dev/null | grep -q "version $(patsubst v%,%,$(GOLANGCI_LINT_VERSION)) "; then \
	  echo "make lint: installing golangci-lint $(GOLANGCI_LINT_VERSION)"; \
	  GOFLAGS= $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); \
	fi
	$(GOLANGCI_LINT) run ./...

unit:
	$(GO) test -race -p 1 -count=1 -timeout 20m ./...

# Every fuzz target, each for FUZZTIME, after the seed corpus ran in `unit`.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

## bench: side-by-side figures against haproxy, socat and blackbox_exporter (bench/README.md).
bench: bench-deps build
	./bench/run.sh

clean:
	rm -rf $(BINARY) .build dist
