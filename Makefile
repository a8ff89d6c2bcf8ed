# Set-up is idempotent: .venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# The CPU build of torch, installed first on machines without CUDA so that the
# project's loose torch range does not pull a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup data demo test bench lab notebooks-check notebooks-strip clean

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

# Fashion-MNIST from Debian's dataset-fashion-mnist when we are root with apt; otherwise
# say how to get it (the shipped models and the demo need no data set).
FASHION_DIR = /usr/share/datasets/fashion-mnist
data:
	@if [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ] || [ -n "$$FASHION_MNIST_DIR" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not found (only training and the data tests need it). Get it with"; \
		echo "  sudo apt install dataset-fashion-mnist, or set FASHION_MNIST_DIR=<folder of the"; \
		echo "  four .gz files>, or set FASHION_MNIST_DOWNLOAD=1 to download on first use."; \
	fi

demo: setup
	$(PY) -m experiments.demo

# pytest's exit code (5 = nothing collected included) is make's exit code.
test: setup data
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The loop's cost against diffusers' and the model-call share, as ratios from one run.
bench: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m experiments.bench

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# Notebooks are committed without outputs: check, or strip them before a commit.
notebooks-check: setup
	$(PY) -m tests.test_notebook_hygiene
notebooks-strip: setup
	$(PY) -m tests.test_notebook_hygiene --strip

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
