# the first interpreter from 3.11 to 3.13 that runs: on PATH, then pyenv's versions
# (PYTHON=/path/to/python overrides)
PYTHON ?= $(shell for v in 3.11 3.12 3.13; do for p in python$$v $$HOME/.pyenv/versions/$$v*/bin/python$$v; do \
	if $$p -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13)' >/dev/null 2>&1; then echo $$p; exit 0; fi; \
	done; done; echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test layers bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/auditlog --data-dir ./auditlog-data serve --demo --listen 127.0.0.1:8080

test: $(STAMP) layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n auto -q

# The import contracts in pyproject.toml, checked on the package as it installs:
# the layer folders copied under auditlog/ (import-linter reads a package from
# its directory, which the source tree's folder mapping does not give it)
layers: $(STAMP)
	rm -rf build/layers && mkdir -p build/layers/auditlog
	cp auditlog/*.py build/layers/auditlog/
	for d in engine ingest query export bench cli; do cp -r $$d build/layers/auditlog/; done
	cd build/layers && ../../$(BIN)/lint-imports --config ../../pyproject.toml

bench: $(STAMP)
	$(BIN)/auditlog bench --json bench-results.json

clean:
	rm -rf $(VENV) *.egg-info
