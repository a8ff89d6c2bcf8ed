# Set-up is idempotent: .venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# The CPU build of torch, installed first on machines without CUDA so that the
# project's loose torch range does not pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "no CUDA here: installing $(TORCH_CPU) first"; \
		$(PY) -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install --quiet -e ".[dev,notebooks]"
	touch $(STAMP)

demo: setup
	$(PY) -m experiments.demo

# pytest's exit code (5 = nothing collected included) is make's exit code.
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
