# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch must be pinned before anything pulls it in: an unpinned resolve downloads a multi-GB build.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
# Which torch build: PyPI's CUDA one (a ~6 GB venv) where `nvidia-smi -L` lists a GPU, else the CPU-only
# one (~1 GB) when PyTorch's CPU index answers within 3 s; where it does not (machines that reach only
# PyPI), PyPI's. `make TORCH_INDEX=` forces PyPI's build; any other wheel index URL works too.
CPU_INDEX   := https://download.pytorch.org/whl/cpu
CPU_INDEX_UP = $(shell $(PY) -c "import urllib.request as u; u.urlopen('$(CPU_INDEX)/torch/', timeout=3)" 2>/dev/null && echo yes)
TORCH_INDEX ?= $(if $(shell nvidia-smi -L 2>/dev/null),,$(if $(CPU_INDEX_UP),$(CPU_INDEX)))
export HF_HUB_OFFLINE ?= 1

.PHONY: venv demo test test-all lint format docs clean wheels gpu-check

$(BIN)/zocli: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "installing $(TORCH) from $(or $(TORCH_INDEX),PyPI (CUDA build))"
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/zocli

venv: $(BIN)/zocli

demo: venv  ## train the embedded default (the test-bed, pretrained tiny CLIP) and print the accuracy matrix
	$(BIN)/zocli train --preset demo --out runs/demo --overwrite

# One worker per core (pytest-xdist); a module's tests stay on one worker, so its fixtures (a trained
# run, a reference run) are built once, longest modules first (tests/conftest.py's order, kept by
# --no-loadscope-reorder). Under 3 minutes on 2 cores; PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: venv  ## the default (CPU, offline) test suite
	$(PYTEST)

test-all: venv  ## also the slow ViT-B/16-sized checks
	$(PYTEST) -m 'not gpu'

# An air-gapped GPU node that has PyTorch: `make wheels` here (same Python version and architecture as the node)
# fills wheels/ with zocli's wheel, its dependencies and pytest at this venv's versions, PyTorch excepted
# (scripts/wheels.py); copy the repository with wheels/ there and run `make gpu-check GPU_PY=python3`, which
# installs from wheels/ only (--no-index: the node's torch is kept, never replaced; what is installed stays).
WHEELS ?= wheels
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_OUT ?= gpu-check

wheels: venv  ## zocli's wheel and its dependencies but PyTorch in wheels/, for `make gpu-check` offline
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(BIN)/pip wheel -q --no-deps -w $(WHEELS) .
	$(BIN)/python scripts/wheels.py > $(WHEELS)/requirements.txt
	$(BIN)/pip wheel -q --no-deps -w $(WHEELS) -r $(WHEELS)/requirements.txt
	@du -sh $(WHEELS)

gpu-check:  ## on a CUDA device: gpu tests, memory, step time, fidelity, input pipeline, W=1 vs N (under 8 min)
	$(GPU_PY) -m pip install -q --no-index --find-links $(WHEELS) zocli pytest
	$(GPU_PY) perf/gpu_check.py --out $(GPU_OUT)

lint: venv  ## ruff: lint and format check (pyproject.toml's [tool.ruff])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: venv  ## the documentation site into site/ (mkdocs.yml; strict: a warning, broken link or anchor fails)
	$(BIN)/pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site
