# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv on first use).
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision are pinned here (not in pyproject) so that a fresh machine gets the wheels on its disk; users
# with their own CUDA build can `make TORCH_SPEC= ...` or pip install -e . into their environment.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_PIP_ARGS ?=
TINY_MODELS := clip-tiny flava-tiny beit3-tiny flamingo-tiny
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test lint leaderboard synthetic-results rehearsal clean

$(VENV)/.installed: pyproject.toml requirements/parity.txt
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) $(TORCH_SPEC))
	$(BIN)/python -m pip install -q -e '.[test]'
	# Reference implementations for parity tests; --no-deps because their pins (old timm/fairscale) would clash.
	$(BIN)/python -m pip install -q --no-deps -r requirements/parity.txt
	touch $@

setup: $(VENV)/.installed

# The main job, offline: tiny random-weight presets on synthetic data in each task's real format. Tiny models do
# tiny matmuls, for which one thread per process is fastest (more only adds OpenMP synchronisation).
demo: export OMP_NUM_THREADS ?= 1
demo: setup
	$(BIN)/mmbench run --model clip-tiny --model flava-tiny --group flava35 --data synthetic --output .demo
	$(BIN)/mmbench table --results .demo --reported results/reported --out .demo/LEADERBOARD.md --print

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Refresh the committed synthetic results (the leaderboard's second table) and re-render the leaderboard.
synthetic-results: export OMP_NUM_THREADS ?= 1
synthetic-results: setup
	$(BIN)/mmbench run $(addprefix --model ,$(TINY_MODELS)) --group flava35 --data synthetic --redo --no-progress
	$(BIN)/mmbench table

leaderboard: setup
	$(BIN)/mmbench table

# Full-size architectures (random weights) through one short pass of every protocol on real-shape data; prints
# seconds, throughput (model vs data path) and peak memory per (model, task). ~15 min on 2 CPU cores. Filters and
# GPU use: make rehearsal REHEARSAL_ARGS="--models clip --protocols finetune --accelerator gpu --precision bf16-mixed"
REHEARSAL_ARGS ?=
rehearsal: setup
	$(BIN)/python benchmarks/rehearsal.py $(REHEARSAL_ARGS)

clean:
	rm -rf $(VENV) .demo build
