# The two commands: `make run` (the main job) and `make test` (ruff and the tests). Each makes
# the virtualenv first when it is missing, with torch's CPU build pinned (an unpinned torch
# pulls a multi-GB CUDA build; on a GPU machine install the torch you need before `make`).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m raylaw.tune sweep --space search_spaces/lm.yaml --scale N=5e4 --scale D=5e5 --samples 8 --law lm.law.json
	$(PY) -m raylaw.tune plot lm.law.json --out lm-law.png

test: $(VENV)/.installed
	$(VENV)/bin/ruff check raylaw tests bench examples
	$(PY) -m pytest -q
