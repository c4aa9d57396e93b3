# backout: `make demo` and `make test` work on a fresh clone; both create .venv themselves.
PYTHON ?= python3
# Some machines set it (containers often do): then every CLI call, worker and supervisor compiles
# backout's modules again from source (≈ 0.15 s of CPU each, hundreds of times in the suite).
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-long bench lint clean constraints

# constraints.txt pins every package to the version the tests last passed with (regenerate after a
# dependency change: `make constraints`), so a fresh machine installs what was tested.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# --no-compile: pip's byte-compiling of every installed file is half the install time; the modules a
	# run imports are compiled then, once (this Makefile unexports PYTHONDONTWRITEBYTECODE)
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m backout.cli.demo

# Four workers on two cores: the end-to-end tests mostly wait (on holds, polls and processes), and
# `--dist loadfile` gives each worker whole modules, so a module's supervisor starts once. The modules
# go out in collection order (tests/conftest.py puts the long ones first), not xdist's by-test-count.
WORKERS ?= 4

test: install
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder -q -m "not long"

# The crash schedules in their short form (the full ones are bench/crash_*.py, figures in RELIABILITY.md).
test-long: install
	$(PY) -m pytest -n $(WORKERS) --dist loadfile -q -m long

bench: install
	$(PY) -m bench

constraints: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt

lint: install
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .backout .pytest_cache
