# backout: `make demo` and `make test` work on a fresh clone; both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m backout.cli.demo

test: install
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .backout .pytest_cache
