# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
REDIS ?=
STAMP := $(VENV)/.installed

.PHONY: venv redis-server chromium lint test test-unit test-integration demo bench lab soak clean

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

test: venv redis-server chromium lint
	$(BIN)/pytest -q

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: venv redis-server chromium
	$(BIN)/pytest -q tests/integration

demo: venv
	$(BIN)/python -m spark.demo $(if $(REDIS),--redis $(REDIS),)

bench: venv redis-server
	$(BIN)/python tests/benchmarks/run_all.py

# The reliability lab (also part of `make test`), with its figures printed.
lab: venv redis-server
	$(BIN)/pytest -q -s tests/lab

# The lab's chaos runs for longer: make soak MINUTES=30
MINUTES ?= 10
soak: venv redis-server
	$(BIN)/python tests/lab/soak.py --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
