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
	$(BIN)/python -m pip install -q $(PIP_C) -e '.[all,test]'
	touch $@

demo: venv
	$(BIN)/zoolens extract --no-pretrained --model timm:resnet18 \
	    --model 'timm:vit_tiny_patch16_224?img_size=64&reg_tokens=4' \
	    --images 'synthetic:scenes?n=64&size=64&seed=0' --layers blocks --out zoolens-demo/features

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf $(VENV) zoolens-demo .pytest_cache
