# The two commands of README.md: `make demo` and `make test`. Each installs what it needs.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint check
.DEFAULT_GOAL := test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv==0.13.9

# uv installs the same pins as pip (the two freezes were compared) in a fraction of pip's
# ~90 s from empty caches, CI's first step. It compiles the bytecode at install as pip does:
# uncompiled, a clean-clone test run was far slower (a quarter of the tests in 27 minutes),
# its many short-lived Dagster and torch processes compiling modules again. uv reads no pip
# configuration, so a machine's own wheel folder (pip's find-links: on the CI machines, torch's CPU build) is passed on;
# without it torch 2.13.0 comes from PyPI, as with pip.
PIP_FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

# Reinstall only when the dependencies change. The serve extra too: the model-server tests
# run against a real kserve server process; and deploy: test_deploy.py builds run pods' Jobs
# with dagster-k8s and validates the manifests offline.
$(VENV)/.installed: pyproject.toml | $(BIN)/uv
	bash scripts/install_system_deps.sh
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python \
		$(foreach links,$(PIP_FIND_LINKS),--find-links $(links)) -e '.[dev,serve,deploy]'
	touch $@

# dagster-dbt loads the dbt manifest; build it whenever the dbt project changes.
DBT_MANIFEST := dbt_project/target/manifest.json
$(DBT_MANIFEST): $(VENV)/.installed dbt_project/dbt_project.yml dbt_project/profiles.yml \
		$(shell find dbt_project/models dbt_project/macros dbt_project/seeds dbt_project/tests -type f 2>/dev/null)
	cd dbt_project && ../$(BIN)/dbt parse --quiet --profiles-dir .

install: $(VENV)/.installed $(DBT_MANIFEST)

demo: install
	$(BIN)/farm-platform demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers, one module each, longest modules first (conftest.py): the daemon
# tests mostly wait on ticks and runs, which is why two pay on two cores. A third measured
# slower (pytest 21:38 against 20:56 and 18:36: the load average reached 12).
PYTEST_PARALLEL := -n 2 --dist loadfile --no-loadscope-reorder

# Every test: each guarantee (faults, end-to-end stories, the UI) included.
test: lint
	$(BIN)/pytest $(PYTEST_PARALLEL)

# Unit and in-process tests: no daemon, no browser, no long dbt builds. After each change.
test-fast: install
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not slow"

# Data-quality gate: the suites and dbt tests on a clean simulated farm and on corrupted
# copies; fails unless the clean data passes and every corruption is caught.
check: install
	$(BIN)/farm-platform check
