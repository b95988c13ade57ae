# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: pip takes these two from the machine's disk (see DEVELOPERS.md).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,lightning]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cnnclinic demo --out runs/demo

test: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
