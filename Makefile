# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REDIS ?=
STAMP := $(VENV)/.installed

.PHONY: venv redis-server chromium lint test test-on test-unit test-integration demo bench lab soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Integration tests start their own redis-server on a free port; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The dashboard's browser test drives Debian's Chromium through Playwright (Playwright's own
# browser downloads need the internet); install it when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
		echo "installing chromium"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CI: the full suite with coverage on the venv's Python (3.11), then the unit tier on
# each of EXTRA_PYTHONS (`make test EXTRA_PYTHONS=` skips them).
EXTRA_PYTHONS ?= 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
COVERAGE := --cov=spark --cov-report=term:skip-covered

test: venv redis-server chromium lint
	@$(BIN)/python -c 'import sys; print("full suite on Python", sys.version.split()[0])'
	$(BIN)/pytest -q $(COVERAGE)
	@for v in $(EXTRA_PYTHONS); do $(MAKE) --no-print-directory test-on PYV=$$v || exit 1; done

# The unit tier on Python $(PYV), in .venv-$(PYV); skipped with a line when not installed.
test-on:
	@py=$$(ls -d $(PYENV_ROOT)/versions/$(PYV).*/bin/python3 2>/dev/null | sort -V | tail -1); \
	py=$${py:-$$(command -v python$(PYV))}; \
	if [ -z "$$py" ]; then echo "Python $(PYV) is not installed: skipping its unit tier"; exit 0; fi; \
	set -e; v=.venv-$(PYV); \
	if [ ! -f $$v/.installed ] || [ pyproject.toml -nt $$v/.installed ]; then \
		$$py -m venv $$v && $$v/bin/pip install -q --upgrade pip \
		&& $$v/bin/pip install -q -e '.[test]' && touch $$v/.installed; fi; \
	echo "unit tier on Python $$($$v/bin/python -c 'import sys; print(sys.version.split()[0])')"; \
	$$v/bin/pytest -q -m "not integration" -p no:cacheprovider

test-unit: venv
	$(BIN)/pytest -q -m "not integration"

test-integration: venv redis-server chromium
	$(BIN)/pytest -q -m integration

demo: venv
	$(BIN)/python -m workers.demo $(if $(REDIS),--redis $(REDIS),)

# The table goes to tests/benchmarks/results/latest.md; uvloop rows need the `speed` extra.
bench: venv redis-server
	@$(BIN)/python -c 'import uvloop' 2>/dev/null || $(BIN)/pip install -q -e '.[speed]'
	$(BIN)/python tests/benchmarks/run_all.py $(BENCH_ARGS)

# The reliability lab (also part of `make test`), with its figures printed.
lab: venv redis-server
	$(BIN)/pytest -q -s tests/lab

# The lab's chaos runs for longer: make soak MINUTES=30
MINUTES ?= 10
soak: venv redis-server
	$(BIN)/python tests/lab/soak.py --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .ruff_cache .hypothesis .coverage*
