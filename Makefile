# Two commands a new user needs: `make demo` (the main job, offline) and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The versions the test suite was run with; `make CONSTRAINTS=` installs the newest instead.
CONSTRAINTS ?= requirements/tested.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_C) torch torchvision
	$(BIN)/python -m pip install -q $(PIP_C) -e '.[all,ray,test]'
	touch $@

demo: venv
	$(BIN)/zoolens demo --out zoolens-demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf $(VENV) zoolens-demo .pytest_cache
