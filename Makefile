# All setup on a fresh machine: `make setup` (idempotent; seconds when already done).
#   make demo   - the offline demo (fetch real assets, shard the multilingual corpus, ...)
#   make test   - the test suite (what .ci/run calls)
#   make bench  - benchmarks (run by hand; print a table, write CSV under runs/bench)
# On a GPU cluster override TORCH (e.g. `make setup TORCH=torch`) to get your CUDA build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.lightmbert-setup
export LIGHTMBERT_CACHE ?= $(HOME)/.cache/lightmbert

.PHONY: setup demo demo-assets test test-fast bench clean

setup: $(STAMP)

# torch first and pinned (an unpinned torch, or deepspeed before torch, pulls GBs of CUDA
# wheels); deepspeed without build isolation so it records the torch we just installed and
# compiles no ops now (DeepSpeed JIT-compiles what it needs on first use).
$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=68" wheel
	$(PIP) install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation "deepspeed>=0.15"
	$(PIP) install -q -e ".[dev,triton,demo]"
	touch $@

demo-assets: setup
	$(PY) -m demo.assets

# make demo [VARIANT=lightmbert|unfrozen|random] [DEMO_ARGS="--run.max_steps=100 ..."]
VARIANT ?= lightmbert
DEMO_OVERRIDES_lightmbert :=
DEMO_OVERRIDES_unfrozen := --student.freeze_embeddings=false
DEMO_OVERRIDES_random := --student.init=random --student.freeze_embeddings=false
DEMO_RUN := runs/demo/$(VARIANT)

demo: demo-assets
	$(PY) -m data_prep.shard --config configs/data/demo.yaml
	$(PY) -m data_prep.inspect runs/demo/shards
	DS_ACCELERATOR=cpu $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m trainer.distill \
	  --config configs/distill/demo_cpu.yaml --run.output_dir=$(DEMO_RUN) $(DEMO_OVERRIDES_$(VARIANT)) $(DEMO_ARGS)
	$(PY) -m demo.report --teacher $(LIGHTMBERT_CACHE)/demo/teacher \
	  --student $(DEMO_RUN)/student --pairs $(LIGHTMBERT_CACHE)/demo/heldout.jsonl --out $(DEMO_RUN)/eval

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

bench: setup
	$(PY) -m benchmarks.bench_data_prep

clean:
	rm -rf runs build *.egg-info
