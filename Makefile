# Every target creates or reuses .venv by itself.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint format docs clean bench nemesis

BENCH_STAMP := $(VENV)/.bench-stamp

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)  ## the whole stack on this machine's PostgreSQL and Redis
	$(VENV)/bin/medic up

test: $(STAMP)  ## the whole suite: every room (tests/<room>) and the chaos suite
	$(PY) -m pytest

test-fast: $(STAMP)  ## without the chaos and nemesis suites
	$(PY) -m pytest -m "not chaos and not nemesis"

lint: $(STAMP)  ## ruff, mypy strict, the import layers, docs/configuration.md and deploy/prometheus/rules.yml up to date
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m worker.ops.config_doc --check
	$(PY) -m worker.control.alert_rules --check

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

docs: $(STAMP)  ## regenerate docs/configuration.md
	$(PY) -m worker.ops.config_doc

bench: $(STAMP)  ## one bench -> docs/bench/<it>.json: scale by default (~10 min), BENCH=throughput (~3 min), BENCH=flow (~6 min); not in `make test`
	$(PY) -m bench.$(or $(BENCH),scale) > docs/bench/$(or $(BENCH),scale).json.new
	mv docs/bench/$(or $(BENCH),scale).json.new docs/bench/$(or $(BENCH),scale).json

$(BENCH_STAMP): $(STAMP)  # matplotlib, for the benches that draw
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

nemesis: $(BENCH_STAMP)  ## seeded faults on namespace hosts under load, 10 min (root) -> docs/bench/nemesis.json + docs/img/nemesis.png; MINUTES=3 shortens, NEMESIS_SEED=<n> replays
	$(PY) -m bench.nemesis --minutes $(or $(MINUTES),10)
