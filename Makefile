# segany — the two commands that matter:
#   make demo   set up .venv and run the main job (segment a sample image; MODEL=segany_tiny|vit_b|path)
#   make test   set up .venv (the Debian packages and the browser files the tests need) and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= segany_tiny
OUT ?= demo_out

.PHONY: demo test test-fast web serve lint bench model model-gpu eval-model clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/segany demo --model $(MODEL) --out $(OUT)

test: $(VENV)/.installed
	bash scripts/install-system-deps.sh
	$(PY) -m segany.engine.web.build
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The edit loop: everything but the vit_b-sized tests (CI runs `make test`, all of them).
test-fast: $(VENV)/.installed
	bash scripts/install-system-deps.sh
	$(PY) -m segany.engine.web.build
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow"

# The browser tool's JavaScript: npm ci from the pinned lock file, onnxruntime-web copied into
# segany/engine/web/static/vendor/ (ignored; skipped when up to date).
web: $(VENV)/.installed
	$(PY) -m segany.engine.web.build

# The annotation tool on a project of generated sample images and the bundled model: prints
# the URL (with its token) and opens it in the browser when there is one. SERVE_DIR=... PORT=...
SERVE_DIR ?= serve_project
PORT ?= 8000
serve: $(VENV)/.installed web
	test -f $(SERVE_DIR)/project.json || { $(VENV)/bin/segany project init $(SERVE_DIR) --model $(MODEL) \
	  && $(PY) -m segany.data.sample $(SERVE_DIR)/samples --count 8 >/dev/null \
	  && $(VENV)/bin/segany project add $(SERVE_DIR) $(SERVE_DIR)/samples; }
	$(VENV)/bin/segany serve $(SERVE_DIR) --port $(PORT) --open

lint: $(VENV)/.installed
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_core.py

# The CPU recipe: train segany_tiny from scratch on a 2-core CPU (~2 h: 126 min measured), bundle it, evaluate it.
model: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m segany train configs/segany_tiny.toml
	$(PY) -m segany.train.bundle runs/segany_tiny/model.safetensors
	$(MAKE) eval-model

# The bundled model from scratch: stage 1 on one GPU (22.9 min measured on an H100), bundled to
# fp16 as stage 2's init; stage 2 (decoder, the paper's hand-over between rounds; measured on a
# 2-core CPU, runs on the GPU too); bundle it, evaluate it.
model-gpu: $(VENV)/.installed
	$(VENV)/bin/segany train configs/segany_tiny_gpu.toml
	$(PY) -m segany.train.bundle runs/segany_tiny_gpu/model.safetensors runs/segany_tiny_gpu/stage1_fp16.safetensors
	$(VENV)/bin/segany train configs/segany_tiny_stage2.toml
	$(PY) -m segany.train.bundle runs/segany_tiny_stage2/model.safetensors
	$(MAKE) eval-model

eval-model: $(VENV)/.installed
	$(VENV)/bin/segany eval procedural:100:1 --out runs/segany_tiny/eval

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache *.egg-info segany/engine/web/node_modules segany/engine/web/static/vendor
