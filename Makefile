# pontoon — see README.md. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := /var/lib/pontoon-apt.stamp

# Debian packages the daemon, tests, lab and benchmarks use. The container
# engines (dockerd, podman, containerd) are installed but never started here:
# a policy-rc.d that refuses service starts guards the install, and the tests
# run each engine only inside a simulated host's own namespaces.
APT_PACKAGES := python3 python3-venv iproute2 nftables libnftables1 iptables conntrack \
	util-linux procps iputils-ping curl jq etcd-server etcd-client \
	containernetworking-plugins netavark dnsmasq-base iperf3 graphviz tcpdump ethtool socat \
	docker.io docker-compose podman containerd runc busybox-static
# docker-proxy, for bench/portmap.py only: unpacked from the docker.io package
# into .bench/, so the benchmark names the exact binary it measures.
DOCKER_PROXY := .bench/docker-proxy

.PHONY: install apt demo test unit integration lint format fuzz bench clean

install: apt $(STAMP)

apt:
	@if [ ! -f $(APT_STAMP) ] || [ "$$(cat $(APT_STAMP))" != "$(APT_PACKAGES)" ]; then \
		missing=$$(dpkg-query -W -f='$${db:Status-Status} $${Package}\n' $(APT_PACKAGES) 2>/dev/null \
			| awk '$$1 != "installed" {print $$2}'; \
			for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages: $$missing"; \
			guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
				printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
			status=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; [ $$status -eq 0 ] || exit $$status; \
		fi; \
		echo "$(APT_PACKAGES)" > $(APT_STAMP); \
	fi

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: install
	$(BIN)/python -m pontoon.demo

test: install
	$(BIN)/ruff check pontoon tests bench
	$(BIN)/ruff format --check pontoon tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=30 tests

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

lint: install
	$(BIN)/ruff check pontoon tests bench
	$(BIN)/ruff format --check pontoon tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format pontoon tests bench
	$(BIN)/ruff check --fix pontoon tests bench

# Every fuzzing harness in tests/fuzz/ (DNS wire path, -p specs, API bodies
# in-process and against a real daemon, the CNI plugin's inputs, schemathesis
# against docs/openapi.yaml) for FUZZ_SECONDS each; `make test` runs the same
# harnesses for a few seconds each.
FUZZ_SECONDS ?= 60
fuzz: install
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -q -p no:cacheprovider tests/fuzz

# Every benchmark runs us and the named peer side by side and prints the
# ratios; BENCH_ARGS=--quick for a short run.
bench: install $(DOCKER_PROXY)
	$(BIN)/python bench/attach.py $(BENCH_ARGS)
	$(BIN)/python bench/portmap.py $(BENCH_ARGS)
	$(BIN)/python bench/dns.py $(BENCH_ARGS)
	$(BIN)/python bench/overlay.py $(BENCH_ARGS)
	$(BIN)/python bench/cni.py $(BENCH_ARGS)
	$(BIN)/python bench/docker.py $(BENCH_ARGS)

$(DOCKER_PROXY):
	mkdir -p .bench/deb
	cd .bench/deb && apt-get download docker.io
	dpkg-deb -x .bench/deb/docker.io_*.deb .bench/root
	cp "$$(find .bench/root -name docker-proxy -type f | head -n1)" $@
	rm -rf .bench/deb .bench/root

clean:
	rm -rf $(VENV) build *.egg-info
