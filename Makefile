# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs torch 2.13.0 (CPU wheel here) and the package,
# makes sure Fashion-MNIST is present, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-slow setup data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

data: $(STAMP)
	$(VENV)/bin/cleantrain fetch fashion-mnist

demo: data
	$(VENV)/bin/cleantrain demo --overwrite

test: data
	$(PY) -m pytest -q -x

test-slow: data
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs build src/*.egg-info
