#!/usr/bin/env bash
# One-shot GPU check, prepared for a short loan of a CUDA box (H200; torch + triton + numpy + pytest, no faiss,
# no network, no .venv): the kernel tests natively on CUDA, the quick kernel benchmark, a short retrieval search
# benchmark on the torch backend (the Triton ADC scan) beside the CPU faiss numbers of bench/RESULTS.md, the engine
# (CUDA graphs) against transformers on the mixed workload in bf16, the speculative speed-up, then a summary table. Finishes in under 6 minutes: every
# step runs under `timeout`, capped by what is left of a global budget; a failing or timed-out step is reported in
# the table and the next one still runs.
#
#   bash bench/gpu_check.sh                 # from anywhere; runs in the repository root
#   GPU_CHECK_BUDGET=300 PYTHON=python3.12 bash bench/gpu_check.sh
#
# Full logs go to $GPU_CHECK_LOGS (default: $OUT when set, as on the device runner, else a fresh temp dir).
# Exit status: 0 when every step passed, 1 otherwise.
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${GPU_CHECK_BUDGET:-330}  # seconds for all steps; the summary needs a few more
LOGS=${GPU_CHECK_LOGS:-${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}}
mkdir -p "$LOGS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PQRAG_KERNELS=auto

NAMES=() STATUS=() SECS=() NOTES=()

# step NAME LIMIT_S NOTE_CMD -- CMD...: run CMD under timeout (capped by the budget left), log to $LOGS/NAME.log,
# echo its last lines, and record status / seconds / a one-line note (NOTE_CMD reads the log on stdin).
step() {
    local name=$1 limit=$2 note_cmd=$3
    shift 4
    local left=$((BUDGET - SECONDS - 12))  # 10 s of kill grace + a margin
    ((limit > left)) && limit=$left
    local log="$LOGS/$name.log" start=$SECONDS rc status
    echo
    echo "=== $name (limit ${limit}s) ==="
    if ((limit < 10)); then
        NAMES+=("$name") STATUS+=("SKIP") SECS+=(0) NOTES+=("no time left in the ${BUDGET}s budget")
        echo "skipped: budget spent"
        return
    fi
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=TIMEOUT ;;
        *) status="FAIL($rc)" ;;
    esac
    tail -n "${TAIL_LINES:-25}" "$log"
    NAMES+=("$name") STATUS+=("$status") SECS+=($((SECONDS - start)))
    local note
    note=$(bash -c "$note_cmd" <"$log" 2>/dev/null)
    # a step that died early: its last line says why (or how far a timed-out pytest got)
    [[ -z $note ]] && note="last: $(grep -v '^\s*$' "$log" | tail -n 1)"
    NOTES+=("$(printf '%s' "$note" | tr '\n|' ' /' | cut -c1-120)")
}

# --- 1. environment ----------------------------------------------------------------------------------------
step env 30 "tail -n 1" -- "$PY" -c '
import torch, triton, platform
ok = torch.cuda.is_available()
try:
    import faiss; fa = faiss.__version__
except ImportError:
    fa = "missing (faiss tests skip)"
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__, "| faiss", fa)
assert ok, "no CUDA device visible to torch"
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}")
'

# --- 2. kernel tests on CUDA ---------------------------------------------------------------------------------
# One config per kernel (the smallest, see kernels/triton/_tuning.py) and short tuning: on a fresh box the suite is
# dominated by Triton compiling every config for every constexpr combination, which alone would take the budget.
PQRAG_TUNE_CONFIGS=1 PQRAG_TUNE_MS=2 TAIL_LINES=30 \
    step pytest-kernels 140 "grep -E '(passed|failed|error)' | tail -n 1" -- \
    "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=5 tests/kernels

# --- 3. quick kernel benchmark, one process per section so a slow one cannot starve the others -------------
bench_note="grep -cE '\\| error \\||failed' | sed 's/^/error rows: /'"
TAIL_LINES=40 step bench-flash 80 "$bench_note" -- "$PY" bench/kernels.py --quick --only flash
TAIL_LINES=20 step bench-paged-pq 45 "$bench_note" -- "$PY" bench/kernels.py --quick --only paged,pq
TAIL_LINES=12 step bench-moe 60 "$bench_note" -- "$PY" bench/kernels.py --quick --only moe

# --- 4. retrieval search on the GPU ---------------------------------------------------------------------------
# bench/retrieval.py compares against faiss and embeds real text (it imports faiss and the MiniLM model), neither
# of which this box has; this is the torch backend alone on synthetic clustered vectors: batched queries/s and
# recall@10 against exact search, PQ (exhaustive Triton ADC) and IVF-PQ (per-list Triton ADC).
step retrieval 45 "grep '^| ' | tail -n 2 | cut -d'|' -f2,5,6" -- "$PY" - <<'EOF'
import os, time
import numpy as np
import torch
from retrieval.vector_index import IndexConfig, VectorIndex

dev = os.environ.get("RG_DEVICE", "cuda")
n, nq, d, k = int(os.environ.get("RG_N", 100_000)), int(os.environ.get("RG_NQ", 1000)), 384, 10
g = torch.Generator(device="cpu").manual_seed(0)
centers = torch.nn.functional.normalize(torch.randn(256, d, generator=g), dim=1)
def sample(m):  # clustered unit vectors: nearest neighbours are meaningful, unlike isotropic noise
    x = centers[torch.randint(0, 256, (m,), generator=g)] + 1.4 * torch.randn(m, d, generator=g) / d ** 0.5
    return torch.nn.functional.normalize(x, dim=1).numpy()
xb, xq = sample(n), sample(nq)
xb_t, xq_t = torch.from_numpy(xb).to(dev), torch.from_numpy(xq).to(dev)
gt = (xq_t @ xb_t.T).topk(k, dim=1).indices.cpu().numpy()
print(f"{n} x {d} synthetic vectors, {nq} queries, k={k}, device {dev}\n")
print("| index | build s | search ms (batched) | queries/s | recall@10 |\n|---|---:|---:|---:|---:|")
nlist = 1024 if n >= 100_000 else 64
# The collections' own index (VectorIndex) with the torch backend, re-ranking off so the ADC scan is what is timed;
# every setting pinned, retrain() trains it at once (up to 256 vectors per centroid).
base = dict(m=48, nbits=8, metric="ip", backend="torch", device=dev, rerank=False, min_points_per_centroid=1)
for name, cfg in (("PQ m=48", IndexConfig(kind="pq", **base)),
                  (f"IVF-PQ m=48 nlist={nlist} nprobe=32", IndexConfig(kind="ivfpq", nlist=nlist, nprobe=32, **base))):
    t = time.perf_counter()
    idx = VectorIndex(d, cfg)
    idx.add(xb, np.arange(n))
    idx.retrain()  # the owner's call (a collection trains in the background): the pinned setting, now
    assert idx.is_trained
    build = time.perf_counter() - t
    idx.search(xq[:8], k)  # compile / autotune outside the timing
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    _, I = idx.search(xq, k)
    ms = (time.perf_counter() - t) * 1e3
    rec = np.mean([len(set(a) & set(b)) / k for a, b in zip(I, gt)])
    print(f"| {name} | {build:.1f} | {ms:.1f} | {nq / ms * 1e3:.0f} | {rec:.3f} |", flush=True)
# The CPU faiss peers as bench/RESULTS.md records them (100k x 384 vectors of another synthetic mix, 2 threads,
# 1,000 queries batched): same m, nlist, nprobe; compare queries/s, and recall each against its own exact search.
rows = [ln for ln in open("bench/RESULTS.md") if ln.startswith(("| faiss IndexPQ |", "| faiss IndexIVFPQ |"))][:2]
for ln in rows:
    c = [x.strip() for x in ln.strip().strip("|").split("|")]
    print(f"| CPU {c[0]} (RESULTS.md) | {c[1]} | | {c[5]} | {c[3]} |")
EOF

# --- 5. the engine on the GPU: CUDA-graph decode against transformers, bf16, issue 14's mixed workload ---------
step engine-vs-hf 80 "grep -iE 'engine|ratio|x transformers' | tail -n 2" -- \
    "$PY" bench/engine.py --mixed --device cuda --dtype bfloat16 --seeds 1 --repeats 1 --out "$LOGS/engine_gpu.md"

# --- 6. speculative decoding on the GPU: the bundled model on Python-docs RAG prompts (topic passages, no embedder)
step speculative 60 "grep -E 'speed-up' | tail -n 1" -- \
    "$PY" bench/speculative.py --device cuda --dtype bfloat16 --retrieval topic --questions 16 --single 8 \
    --streams 1 8 --repeats 1 --max-tokens 64 --out "$LOGS/speculative_gpu.md"

# --- summary ---------------------------------------------------------------------------------------------------
fails=0
echo
echo "## GPU check summary ($(date -u '+%Y-%m-%d %H:%M UTC'), ${SECONDS}s, logs in $LOGS)"
echo
echo "| step | status | s | note |"
echo "|---|---|---:|---|"
for i in "${!NAMES[@]}"; do
    [[ ${STATUS[$i]} == ok ]] || fails=$((fails + 1))
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} | ${NOTES[$i]} |"
done
echo
((fails == 0)) && echo "all steps passed" || echo "$fails step(s) did not pass"
((fails == 0))
