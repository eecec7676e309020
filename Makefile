# pqrag — the two commands are `make demo` and `make test`.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
PORT     ?= 50051
DATA_DIR ?= demo-data
# CPU torch wheel that lies on these machines; the range in pyproject.toml then needs no download.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test test-fast demo serve proto bench-retrieval bench-kernels bench-engine bench-rag default-model gpu-check clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

test: venv
	$(BIN)/python -m pytest -q tests

# Regenerate the committed gRPC stubs from proto/ (tests/service/test_proto_stubs.py fails when they are stale).
proto: venv
	$(BIN)/python -m service.codegen

demo: venv
	$(BIN)/python -m service.demo --data-dir $(DATA_DIR) --port $(PORT)

serve: venv
	$(BIN)/pqrag serve --data-dir $(DATA_DIR) --port $(PORT)

bench-retrieval: venv
	$(BIN)/python bench/retrieval.py

bench-kernels: venv
	$(BIN)/python bench/kernels.py

bench-engine: venv
	$(BIN)/python bench/engine.py

bench-rag: venv
	$(BIN)/python bench/rag.py

# The bundled generator: preset "small" trained by our own trainer on the Python documentation (CPU, ~30 min).
# Only the export (config.json, model.safetensors, tokenizer.json) and the loss curve are committed.
DEFAULT_MODEL_STEPS ?= 1500
default-model: venv
	$(BIN)/python -m llm.train --pydoc --preset small --max-steps $(DEFAULT_MODEL_STEPS) --out out/pqrag-small
	mkdir -p models/pqrag-small
	cp out/pqrag-small/config.json out/pqrag-small/model.safetensors out/pqrag-small/tokenizer.json \
	   out/pqrag-small/metrics.jsonl models/pqrag-small/
	-cp out/pqrag-small/tokenizer_config.json out/pqrag-small/loss.png models/pqrag-small/

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache bench/out
