# All setup on a fresh machine: `make setup` (idempotent; seconds when already done).
#   make demo         the offline demo (real multilingual teacher + text → distil → evaluate → ship)
#   make test         the whole test suite, in the locked environment (what .ci/run calls first)
#   make test-fast    the fast tier (tests not marked slow), locked environment
#   make test-latest  the fast tier in a fresh venv with the newest releases our ranges admit
#   make lock         regenerate requirements-lock.txt from those newest releases
#   make bench        benchmarks (run by hand; print a table, write CSV under runs/bench)
# On a GPU cluster override TORCH with your CUDA build of the locked torch version.
PYTHON ?= python3
VENV   ?= .venv
# The lock: exact versions of every package `make setup` installs, transitive ones included
# (Linux x86_64, CPython 3.11, CPU torch). pyproject.toml keeps the ranges.
LOCK   ?= requirements-lock.txt
TORCH  ?= torch
EXTRAS ?= dev,triton,demo,bench,deploy
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.lightmbert-setup
# The newest releases (make test-latest, make lock). torch is the platform, not a dependency we
# track: the local CPU build (any other version pulls GBs of CUDA wheels on these machines).
LATEST       ?= .venv-latest
TORCH_LATEST ?= torch==2.13.0
LPY          := $(LATEST)/bin/python
LPIP         := $(LPY) -m pip --disable-pip-version-check
PYTEST_FAST  := -m pytest -q tests -m "not slow"
export LIGHTMBERT_CACHE ?= $(HOME)/.cache/lightmbert

.PHONY: setup demo demo-assets test test-fast test-latest latest-env lock bench gpu-check gpu-wheels gpu-wheels-check clean

setup: $(STAMP)

# torch first (a package that asks for torch before it is there pulls GBs of CUDA wheels);
# deepspeed without build isolation so it records the torch we just installed and compiles no
# ops now (DeepSpeed JIT-compiles what it needs on first use); then everything else exactly as
# locked, and `pip check` that the set is consistent.
$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) setuptools wheel
	$(PIP) install -q -c $(LOCK) "$(TORCH)"
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c $(LOCK) deepspeed
	$(PIP) install -q --no-build-isolation -r $(LOCK) -e ".[$(EXTRAS)]"
	$(PIP) check
	touch $@

# A fresh venv with the newest releases pyproject.toml's ranges admit (same install order).
latest-env:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LPIP) install -q --upgrade setuptools wheel
	$(LPIP) install -q "$(TORCH_LATEST)"
	DS_BUILD_OPS=0 $(LPIP) install -q --no-build-isolation deepspeed
	$(LPIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"
	$(LPIP) check
	@$(LPIP) freeze --all --exclude-editable | grep -v '^pip==' \
	  | sed 's/^torch==\([^+]*\)+.*/torch==\1/' > $(LATEST)/freeze.txt
	@echo "newer than the lock:"; grep -vxF -f $(LOCK) $(LATEST)/freeze.txt || echo "  (nothing)"

test-latest: latest-env
	$(LPY) $(PYTEST_FAST)

# Regenerate the lock from the newest releases (then `make test`: setup reinstalls from it).
lock: latest-env
	{ echo "# make lock: the newest releases pyproject.toml admits, $$(date -u +%Y-%m-%d), CPython $$($(LPY) -c 'import platform; print(platform.python_version())') $$(uname -m)"; \
	  cat $(LATEST)/freeze.txt; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

demo-assets: setup
	$(PY) -m lightmbert.demo.assets

# make demo [VARIANT=lightmbert|monolingual|unfrozen|random] [DEMO_ARGS="--run.max_steps=100 ..."]
VARIANT ?= lightmbert
DEMO_OVERRIDES_lightmbert :=
# monolingual text only (the paper's setting): no translation pairs; the best monolingual
# recipe of configs/sweep/monolingual.yaml (in-batch relation MSE, lr 2e-4), 32 sequences per
# rank per step (the sequences the default variant spends on 8 + 12 pairs)
DEMO_OVERRIDES_monolingual := --data.parallel=false --loss.relation=mse --optim.lr=2e-4 --data.micro_batch_size=32
DEMO_OVERRIDES_unfrozen := --student.freeze_embeddings=false
DEMO_OVERRIDES_random := --student.init=random --student.freeze_embeddings=false
DEMO_RUN := runs/demo/$(VARIANT)
# the shippable student: pieces seen at least this often in the demo's shards, then the
# tokenizer's most probable other pieces of the same scripts up to TRIM_BUDGET pieces, so text
# outside the demo's domain keeps its segmentation (lightmbert.deploy.trim; 0: shards only)
TRIM_MIN_COUNT ?= 1
TRIM_BUDGET ?= 150000
# the held-out sets every model of the demo is scored on: in-domain (the demo's own held-out
# pairs) and out-of-domain (LibreOffice help, a source the demo never trains on)
DEMO_SETS := in_domain=$(LIGHTMBERT_CACHE)/demo/heldout.jsonl@ar,bg,de,el,es,fr,hi,ru,sw,th,tr,ur,vi,zh \
  out_of_domain=$(LIGHTMBERT_CACHE)/demo/heldout_ood.jsonl@de,el,es,fr,hi,ru,tr,vi,zh,ja,ko,id

demo: demo-assets
	$(PY) -m lightmbert.data_prep.shard --config configs/data/demo.yaml
	$(PY) -m lightmbert.data_prep.inspect runs/demo/shards
	DS_ACCELERATOR=cpu $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m lightmbert.trainer.distill \
	  --config configs/distill/demo_cpu.yaml --run.output_dir=$(DEMO_RUN) $(DEMO_OVERRIDES_$(VARIANT)) $(DEMO_ARGS)
	$(PY) -m lightmbert.demo.report --teacher $(LIGHTMBERT_CACHE)/demo/teacher \
	  --student $(DEMO_RUN)/student $(foreach s,$(DEMO_SETS),--pairs $(s)) --out $(DEMO_RUN)/eval
	$(PY) -m lightmbert.deploy.trim $(DEMO_RUN)/student $(DEMO_RUN)/student-trimmed --shards runs/demo/shards \
	  --min-count $(TRIM_MIN_COUNT) --budget $(TRIM_BUDGET) --overwrite \
	  --heldout in_domain=$(LIGHTMBERT_CACHE)/demo/heldout.jsonl --heldout out_of_domain=$(LIGHTMBERT_CACHE)/demo/heldout_ood.jsonl
	$(PY) -m lightmbert.deploy.onnx_export $(DEMO_RUN)/student-trimmed $(DEMO_RUN)/student-trimmed-onnx --int8
	$(PY) -m lightmbert.benchmarks.bench_student --teacher $(LIGHTMBERT_CACHE)/demo/teacher --student $(DEMO_RUN)/student \
	  --trimmed $(DEMO_RUN)/student-trimmed --trimmed-onnx $(DEMO_RUN)/student-trimmed-onnx \
	  $(foreach s,$(DEMO_SETS),--pairs $(s)) --prefix "query: " --out $(DEMO_RUN)/deploy

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) $(PYTEST_FAST)

bench: setup
	$(PY) -m lightmbert.benchmarks.bench_data_prep

# The GPU proof (kernel tests on CUDA, bench_kernels bf16, bench_step --size mbert) → runs/gpu-check/.
# No `setup` dependency: on a GPU image it runs under the python that has the CUDA torch (a CPU
# torch must not be installed there); packages the image lacks come from .whl/ (make gpu-wheels).
# Without CUDA it says why and exits 0.
GPU_PY ?= $(shell test -x $(PY) && echo $(PY) || echo python3)
gpu-check:
	$(GPU_PY) -m lightmbert.benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Wheels for a GPU machine without network (Python 3.12 manylinux image): what it lacks to run
# gpu-check, each exactly at the lock's version (the names and the reasons:
# lightmbert/benchmarks/gpu_wheels.py; `gpu_wheels pins` reads the versions from $(LOCK)).
# deepspeed ships as an sdist only: built here, at the locked version, into a pure-Python wheel.
# `make gpu-wheels-check` installs the set as gpu_check does (--no-index --no-deps --target, for
# CPython 3.12) and checks versions, requirements and — under a Python 3.12, GPU_WHEELS_PY —
# the imports.
WHEEL_DIR ?= .whl
GPU_WHEELS_PY ?= python3.12
gpu-wheels: setup
	mkdir -p $(WHEEL_DIR) && rm -f $(WHEEL_DIR)/*.whl
	pins="$$($(PY) -m lightmbert.benchmarks.gpu_wheels pins --lock $(LOCK))" && \
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d $(WHEEL_DIR) $$pins
	DS_BUILD_OPS=0 $(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) \
	  "deepspeed==$$(sed -n 's/^deepspeed==//p' $(LOCK))"

gpu-wheels-check: setup
	GPU_WHEELS_PY=$(GPU_WHEELS_PY) $(PY) -m lightmbert.benchmarks.gpu_wheels check --lock $(LOCK) --wheels $(WHEEL_DIR)

clean:
	rm -rf runs build *.egg-info .whl $(LATEST)
