# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv on first use).
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision are pinned here (not in pyproject) so that a fresh machine gets the wheels on its disk; users
# with their own CUDA build can `make TORCH_SPEC= ...` or pip install -e . into their environment.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test lint leaderboard clean

$(VENV)/.installed: pyproject.toml requirements/parity.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q $(TORCH_SPEC))
	$(BIN)/python -m pip install -q -e '.[test]'
	# Reference implementations for parity tests; --no-deps because their pins (old timm/fairscale) would clash.
	$(BIN)/python -m pip install -q --no-deps -r requirements/parity.txt
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mmbench run --model clip-tiny --model flava-tiny --task flickr30k --task coco --data synthetic --output .demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

leaderboard: setup
	$(BIN)/mmbench table

clean:
	rm -rf $(VENV) .demo build
