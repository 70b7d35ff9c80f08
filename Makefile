# The front door. `make reproduce` runs the main job, `make test` runs the test suite
# (`make test-fast` without its slow end-to-end runs).
# Each target only sets up the environment and calls the package; no logic lives here.

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
PROFILE ?= quick
BIN     := $(VENV)/bin
KERNEL  := rapidai4eo-byol

.PHONY: setup test test-fast reproduce docs lint bench clean

setup: $(VENV)/.installed

# Rebuilt whenever pyproject.toml changes; the stamp file marks a finished install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[notebooks,test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (rapidai4eo-byol)"
	touch $@

test: setup
	$(BIN)/ruff check rapid_utils tests notebooks benchmarks experiments
	$(BIN)/python -m pytest

# The suite without its long end-to-end runs (`slow`): a few minutes, for while you work.
test-fast: setup
	$(BIN)/ruff check rapid_utils tests notebooks benchmarks experiments
	$(BIN)/python -m pytest -m "not slow"

reproduce: setup
	$(BIN)/rapid-utils reproduce --profile $(PROFILE)

# HTML pages of the executed notebooks with an index (runs/$(PROFILE)/html/index.html).
docs: setup
	$(BIN)/rapid-utils docs --profile $(PROFILE) --publish docs/$(PROFILE)/notebooks

lint: setup
	$(BIN)/ruff check rapid_utils tests notebooks benchmarks experiments

# torch threads with and without a competing process; BYOL training throughput and peak memory, ours next to lightly's; our views next to kornia's (when installed); packed store vs GeoTIFFs
# (packing, decoding, training, memory); realism's bootstrap tolerances; fine-tuning's AdamW step (for-loop vs fused);
# gpu_check: the ci study trains (bf16, channels_last on a GPU; tiny sizes on a CPU) and ResNet-50 BYOL throughput.
# A few minutes each on a laptop CPU.
bench: setup
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/job_times.py --profile $(PROFILE)
	$(BIN)/python benchmarks/byol_throughput.py
	$(BIN)/python benchmarks/recipe_cost.py
	$(BIN)/python benchmarks/augment_kornia.py
	$(BIN)/python benchmarks/store_throughput.py
	$(BIN)/python benchmarks/realism_tolerances.py
	$(BIN)/python benchmarks/optimizer_step.py
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf runs data/synthetic-*
