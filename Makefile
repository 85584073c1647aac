# The two commands of the README:
#   make demo   build the environment, then train a reward model on an embedded local Ray
#   make test   build the environment, then run the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
# Where torch comes from. Empty: pip's configured indexes, where PyPI's torch==2.13.0 for
# Linux x86-64 is the CUDA 13.0 build (several GB of nvidia-* wheels). A CPU-only machine:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
BIN := $(VENV)/bin
# DeepSpeed compiles its C++ ops on first use; keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, by its exact pin (and TORCH_INDEX's build when given), so that the rest
	# of the install keeps that build rather than pulling another.
	$(BIN)/python -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/rayreward train storage.name=demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -p no:cacheprovider -ra --durations=40

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -p no:cacheprovider -ra -m "not slow"

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .cache runs
