# labkit pipeline.  On a fresh Debian/Ubuntu machine, as root:
#   sudo make report   # installs what it needs, runs the default sweep, writes the HTML report
#   sudo make test     # installs what it needs, runs the whole test suite
SHELL := /bin/bash
# Debian's interpreter when there is one: a venv built on it runs for every user (an
# interpreter under /root would not: `make test-unit` is for any user)
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= params/default.yaml
# the run's time taken once (`:=`): a `?=` of $(shell date) is expanded at each use, and the sweep's
# and the report's lines of `make report` once straddled a second (sweep into ...-040639, report of ...-040640)
RUN_STAMP := $(shell date +%Y%m%d-%H%M%S)
RUN ?= runs/$(basename $(notdir $(PARAMS)))-$(RUN_STAMP)
REFERENCE ?= data/reference/default-6.18
PUBLISH_DIR ?= build/publish
# `make report` aims to end within REPORT_MINUTES of its start, set-up and kernel build included:
# the sweep's late and settle rounds run only while each is expected to end 90 s before that
REPORT_MINUTES ?= 30
REPORT_START := $(shell date +%s)
# Debian packages the lab needs (see README "Dependencies" for why each is there)
APT_PACKAGES := iproute2 iptables nftables procps kmod conntrack \
	clang llvm libbpf-dev linux-libc-dev bpftool ethtool \
	ipvsadm ipset qemu-system-x86 busybox-static file \
	apache2-utils python3-venv python3-dev gcc chromium strace \
	make flex bison bc xz-utils perl patch

.PHONY: setup apt tools venv report sweep test test-unit lint lab publish clean distclean

setup: apt $(STAMP) tools

# nginx for the HTTP cross-check: Debian's package unpacked into .cache/tools, not
# installed (installing it would enable and start a web server on the host)
tools: apt $(STAMP)
	$(BIN)/python -m labkit.host.debcache fetch nginx
	@# labkit's user-mode Linux (every mode, IPVS included, in one kernel at native speed): built
	@# once from Debian's pinned kernel source into the cache (about 10 min on 2 cores), never installed
	$(BIN)/python -m labkit.guests.uml build

apt:
	@if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root (sudo make ...): it installs Debian packages" >&2; exit 2; fi
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,vm]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# the Python environment alone (no root, no Debian packages): enough for `make publish`
venv: $(STAMP)

# the default sweep (4 rounds, 6 for nftables, eBPF and IPVS: about 17 minutes on this 2-core Xeon, more on a slower day or machine; the 5th and 6th rounds and the settle rounds for the claims still open only while each is expected to end within 22 minutes of the sweep's start and within REPORT_MINUTES of `make report`'s; the kernel build about 5 more on a fresh clone: README) and its report
report: setup
	$(BIN)/python -m labkit sweep --params $(PARAMS) --out $(RUN) \
	  --end-by $$(( $(REPORT_START) + $(REPORT_MINUTES) * 60 - 90 ))
	$(BIN)/python -m labkit report $(RUN)
	@echo "report: $(RUN)/report.html"

# a sweep from any parameter file, through the parameterized notebook (papermill)
sweep: setup
	@# the parameters checked as `labkit sweep` checks them, before anything is created
	$(BIN)/python -m labkit params $(PARAMS) >/dev/null
	mkdir -p $(RUN)
	$(BIN)/papermill notebooks/sweep.ipynb $(RUN)/sweep.ipynb -f $(PARAMS) -p out_dir $(RUN) \
	  -p command "make sweep PARAMS=$(PARAMS) RUN=$(RUN)"
	$(BIN)/python -m labkit report $(RUN)

test: setup
	$(BIN)/python -m pytest -v -rs $(PYTEST_ARGS)

# unit tests only: no root, no Debian packages, no kernel state (any user)
test-unit: $(STAMP)
	$(BIN)/python -m pytest -v -rs -m "not root and not vm" $(PYTEST_ARGS)

# the checks CI runs before the tests (also pre-commit hooks: .pre-commit-config.yaml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python .ci/check_layers.py labkit

# JupyterLab rooted at the repository (notebooks/, data/, runs/ all visible); analysis
# needs no root, measuring does (run it as root to sweep from a notebook)
lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# rebuild the published report from the committed reference run (no root needed)
publish: $(STAMP)
	$(BIN)/python -m labkit report $(REFERENCE) --out $(PUBLISH_DIR)
	@echo "published: $(PUBLISH_DIR)/report.html"

clean:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m labkit clean; fi

distclean: clean
	rm -rf $(VENV) .cache build
