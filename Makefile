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

.PHONY: setup demo demo-assets test test-fast bench gpu-check gpu-wheels clean

setup: $(STAMP)

# torch first and pinned (an unpinned torch, or deepspeed before torch, pulls GBs of CUDA
# wheels); deepspeed without build isolation so it records the torch we just installed and
# compiles no ops now (DeepSpeed JIT-compiles what it needs on first use).
$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=68" wheel
	$(PIP) install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation "deepspeed>=0.15"
	$(PIP) install -q -e ".[dev,triton,demo,bench,deploy]"
	touch $@

demo-assets: setup
	$(PY) -m demo.assets

# make demo [VARIANT=lightmbert|monolingual|unfrozen|random] [DEMO_ARGS="--run.max_steps=100 ..."]
VARIANT ?= lightmbert
DEMO_OVERRIDES_lightmbert :=
# monolingual text only (the paper's setting): no translation pairs; the best monolingual
# recipe of configs/sweep/monolingual.yaml (in-batch relation MSE, lr 2e-4), 32 sequences per
# rank per step (the sequences the default variant spends on 16 + 8 pairs)
DEMO_OVERRIDES_monolingual := --data.parallel=false --loss.relation=mse --optim.lr=2e-4 --data.micro_batch_size=32
DEMO_OVERRIDES_unfrozen := --student.freeze_embeddings=false
DEMO_OVERRIDES_random := --student.init=random --student.freeze_embeddings=false
DEMO_RUN := runs/demo/$(VARIANT)
# the shippable student: pieces seen at least this often in the demo's shards (deploy.trim)
TRIM_MIN_COUNT ?= 1

demo: demo-assets
	$(PY) -m data_prep.shard --config configs/data/demo.yaml
	$(PY) -m data_prep.inspect runs/demo/shards
	DS_ACCELERATOR=cpu $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m trainer.distill \
	  --config configs/distill/demo_cpu.yaml --run.output_dir=$(DEMO_RUN) $(DEMO_OVERRIDES_$(VARIANT)) $(DEMO_ARGS)
	$(PY) -m demo.report --teacher $(LIGHTMBERT_CACHE)/demo/teacher \
	  --student $(DEMO_RUN)/student --pairs $(LIGHTMBERT_CACHE)/demo/heldout.jsonl --out $(DEMO_RUN)/eval
	$(PY) -m deploy.trim $(DEMO_RUN)/student $(DEMO_RUN)/student-trimmed --shards runs/demo/shards \
	  --min-count $(TRIM_MIN_COUNT) --heldout $(LIGHTMBERT_CACHE)/demo/heldout.jsonl --overwrite
	$(PY) -m deploy.onnx_export $(DEMO_RUN)/student-trimmed $(DEMO_RUN)/student-trimmed-onnx --int8
	$(PY) -m benchmarks.bench_student --teacher $(LIGHTMBERT_CACHE)/demo/teacher --student $(DEMO_RUN)/student \
	  --trimmed $(DEMO_RUN)/student-trimmed --trimmed-onnx $(DEMO_RUN)/student-trimmed-onnx \
	  --pairs $(LIGHTMBERT_CACHE)/demo/heldout.jsonl --prefix "query: " --out $(DEMO_RUN)/deploy \
	  --languages ar,bg,de,el,es,fr,hi,ru,sw,th,tr,ur,vi,zh

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

bench: setup
	$(PY) -m benchmarks.bench_data_prep

# The GPU proof (kernel tests on CUDA, bench_kernels bf16, bench_step --size mbert) → runs/gpu-check/.
# No `setup` dependency: on a GPU image it runs under the python that has the CUDA torch (a CPU
# torch must not be installed there); packages the image lacks come from .whl/ (make gpu-wheels).
# Without CUDA it says why and exits 0.
GPU_PY ?= $(shell test -x $(PY) && echo $(PY) || echo python3)
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Wheels for a GPU machine without network (Python 3.12 manylinux image): what it lacks to run
# gpu-check. deepspeed ships as an sdist only: built here into a pure-Python wheel.
GPU_WHEELS := webdataset braceexpand hjson pydantic pydantic-core annotated-types typing-inspection liger-kernel
gpu-wheels: setup
	mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)
	DS_BUILD_OPS=0 $(PIP) wheel -q --no-deps --no-build-isolation -w .whl "deepspeed>=0.15"

clean:
	rm -rf runs build *.egg-info .whl
