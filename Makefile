# Each target sets up .venv itself, so a fresh clone needs nothing but python3.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

test: $(STAMP)
	$(PYTHON) -m pytest
