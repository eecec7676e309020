# pqrag — the two commands are `make demo` and `make test`.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
PORT     ?= 50051
HTTP_PORT ?= 8080
DATA_DIR ?= demo-data
# CPU torch wheel that lies on these machines; the range in pyproject.toml then needs no download.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv browser lint test demo serve proto bench-retrieval bench-kernels bench-engine bench-rag bench-rag-http bench-rag-quality default-model default-model-sft default-reader gpu-check kernels-compat clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The console's browser test drives Debian's chromium through selenium and chromedriver: installed here when
# missing and we are root (as CI is); elsewhere that one test skips and says why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (the console's browser test)"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; \
	  else \
	    echo "no chromium/chromedriver and not root: the console's browser test will skip"; \
	  fi; \
	fi

test: venv browser
	$(BIN)/python -m pytest -q tests

# Style (ruff lint + format check) and the shape of the house (ARCHITECTURE.md): import-linter's layering
# contracts in pyproject.toml, no private names used across modules, no module past ~500 lines.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

# Regenerate the committed gRPC stubs from proto/ (tests/service/test_proto_stubs.py fails when they are stale).
proto: venv
	$(BIN)/python -m service.codegen

demo: venv
	$(BIN)/python -m service.demo --data-dir $(DATA_DIR) --port $(PORT) --http-port $(HTTP_PORT)

serve: venv
	$(BIN)/pqrag serve --data-dir $(DATA_DIR) --port $(PORT) --http-port $(HTTP_PORT)

bench-retrieval: venv
	$(BIN)/python bench/retrieval.py

bench-kernels: venv
	$(BIN)/python bench/kernels.py

bench-engine: venv
	$(BIN)/python bench/engine.py

bench-rag: venv
	$(BIN)/python bench/rag.py

bench-rag-http: venv
	$(BIN)/python bench/rag.py --http

bench-rag-quality: venv
	$(BIN)/python bench/rag_quality.py

# The bundled generator: preset "small" pretrained by our own trainer on the Python documentation (CPU, ~30 min),
# then fine-tuned on RAG conversations in the server's chat format so it answers by quoting and citing the
# numbered passages: rag.sft_data (templated questions in the forms people ask, over Python's reference topics,
# with close-topic distractors, comparisons and unanswerable questions) and rag.sft_squad (questions people wrote,
# SQuAD v1.1 from ../shared/data, only the half of its articles bench/rag_real_sets does not evaluate on; skipped
# when the folder is missing). Only the fine-tuned export (config.json, model.safetensors, tokenizer.json) and the
# loss curves are committed. `make default-model-sft` redoes only the fine-tuning, from SFT_INIT.
DEFAULT_MODEL_STEPS ?= 1200
SFT_EXAMPLES ?= 2000
SFT_STEPS ?= 1200
SFT_INIT ?= out/pqrag-small
SQUAD_DIR ?= ../shared/data/squad-v1.1-dev
# e.g. TRAIN_FLAGS="--threads 1" on a busy machine (oversubscribed OpenMP threads slow a CPU run several-fold)
TRAIN_FLAGS ?=
default-model: venv
	$(BIN)/python -m llm.train --pydoc --preset small --max-steps $(DEFAULT_MODEL_STEPS) --out out/pqrag-small $(TRAIN_FLAGS)
	$(MAKE) default-model-sft

# seq_len 1024 holds a whole example with the passages a served prompt has (rag.sft_data and rag.sft_squad cap
# them at ~1,000 tokens; each starts on a sequence boundary, short ones share one) and is the exported model's
# context (max_position_embeddings), so the server trims a prompt to what the model was trained on; batch 2 keeps
# pretraining's 2,048 tokens/step. The loss is on the answers only (chat records: assistant turns).
# NOTE: the committed models/pqrag-small predates this recipe (pretrain + 2,400 SFT steps of the earlier
# rag.sft_data, seq-len 512). This recipe, run once for 1,200 steps from that model, made it refuse more often
# on real questions (bench/RESULTS.md, "RAG answers on real questions"), so its output was not committed.
# The SFT run directory is derived and cheap, so a rerun starts it afresh (the trainer refuses a used --out).
default-model-sft: venv
	mkdir -p out
	$(BIN)/python -m rag.sft_data --out out/rag_sft.jsonl --n $(SFT_EXAMPLES) --seed 0
	if [ -d $(SQUAD_DIR) ]; then $(BIN)/python -m rag.sft_squad --squad $(SQUAD_DIR) --out out/rag_sft_squad.jsonl \
	   --n $(SFT_EXAMPLES) --seed 0; else echo "no $(SQUAD_DIR): templated questions only"; : > out/rag_sft_squad.jsonl; fi
	rm -rf out/pqrag-small-sft
	$(BIN)/python -m llm.train --init-from $(SFT_INIT) --data out/rag_sft.jsonl out/rag_sft_squad.jsonl \
	   --out out/pqrag-small-sft --model max_position_embeddings=1024 --max-steps $(SFT_STEPS) --seq-len 1024 \
	   --batch-size 2 --lr 3e-4 --warmup-steps 30 --eval-interval 200 $(TRAIN_FLAGS)
	mkdir -p models/pqrag-small
	cp out/pqrag-small-sft/config.json out/pqrag-small-sft/model.safetensors out/pqrag-small-sft/tokenizer.json \
	   models/pqrag-small/
	-cp out/pqrag-small/metrics.jsonl models/pqrag-small/metrics.jsonl
	cp out/pqrag-small-sft/metrics.jsonl models/pqrag-small/sft_metrics.jsonl
	-cp out/pqrag-small-sft/tokenizer_config.json models/pqrag-small/
	-cp out/pqrag-small/loss.png models/pqrag-small/loss.png
	-cp out/pqrag-small-sft/loss.png models/pqrag-small/sft_loss.png

# The bundled extractive reader (rag/reader.py, grounding "extract"): all-MiniLM-L6-v2 (the embedder package) with
# its top 3 layers and a span head fine-tuned by rag.train_reader on SQuAD's training half of articles (when
# SQUAD_DIR exists) and Python-docs questions, one epoch (~45 min on 2 cores). Only reader_config.json,
# reader.safetensors (the fine-tuned layers, float16) and the loss log are committed.
default-reader: venv
	$(BIN)/python -m rag.train_reader --out out/pqrag-reader --squad $(SQUAD_DIR) --pydocs 1000 $(TRAIN_FLAGS)
	mkdir -p models/pqrag-reader
	cp out/pqrag-reader/reader_config.json out/pqrag-reader/reader.safetensors out/pqrag-reader/metrics.jsonl \
	   models/pqrag-reader/

gpu-check:
	bash bench/gpu_check.sh

# The kernel tests under the interpreter with the Triton the GPU image carries (3.6; CI's venv has a newer one),
# in a scratch venv: catches API drift between the two before device time is spent on it. numpy < 2.4 because
# Triton 3.6's interpreter turns 1-element arrays into Python ints, which numpy 2.4 refuses.
COMPAT_VENV ?= /tmp/pqrag-triton36
COMPAT_TRITON ?= triton==3.6.0
kernels-compat:
	test -x $(COMPAT_VENV)/bin/python || $(PY) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -c "import torch" 2>/dev/null || $(COMPAT_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install -q "$(COMPAT_TRITON)" "numpy<2.4" "pytest>=8,<10" "pytest-timeout>=2.3,<3"
	TRITON_INTERPRET=1 $(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/kernels

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache bench/out
