#!/usr/bin/env bash
# GPU readiness (issue 9, item 6): every GPU measurement of ragbatch in at most 8 minutes on one GPU (sized for an
# NVIDIA H200), with random-weight models of the real shapes (no model hub, no network, no weights travel):
#   embed     ragbatch's Embedder (tasks/indexing/embed.py) fp16 vs sentence-transformers fp16, BERT of all-MiniLM-L6-v2's
#             shape (6 layers, mean pooling) and of bge-small's (12 layers, CLS): passages/s and the ratio
#   search    exact dense search (tasks/retrieval/search.py DenseIndex.search: matmul + topk per shard, exact merge) at 1M
#             and 10M x 384 rows, fp16 and bf16: queries/s, GB/s and the share of the device's memory bandwidth;
#             FAISS GpuIndexFlatIP too where faiss has GPU support (skipped with a message otherwise)
#   generate  Generator.generate_ids (tasks/generation/generate.py), batched, vs one plain HF model.generate per prompt, random
#             Qwen2ForCausalLM of Qwen2.5-0.5B's and 1.5B's shapes, bf16, 40-token no-RAG and ~600-token RAG prompts
# Each part runs in its own process under its own time cap (a part that fails or hits its cap does not stop the
# others; rows it finished are kept), then a summary table is printed. With $OUT set (the device tool sets it),
# $OUT gets env.json, embed.json, search.json, generate.json, gpu.json, gpu.md and gpu.log (7 files, within the
# tool's 8); without it they go to a temporary folder whose path is printed at the end.
#
# Usage:
#   bash benchmarks/gpu.sh            # full run, needs CUDA (about 8 minutes at most)
#   bash benchmarks/gpu.sh --smoke    # tiny sizes on whatever is there (a CPU too), seconds; RAGBATCH_GPU_SMOKE=1
#                                     # does the same. Smoke figures check the code paths, they mean nothing.
#   PYTHON=/path/to/python bash benchmarks/gpu.sh   # default: .venv/bin/python if it imports torch, else python3
#
# On the device machine (device tool, `run`):  bash benchmarks/gpu.sh   with timeout_s 540 or so.
# Its image's python3 has torch, transformers, sentence-transformers, tokenizers, safetensors, pyarrow and tqdm
# (/work/.library/device/KINDS.md); tantivy is missing there and is stubbed (BM25 is not measured); faiss is missing,
# so FAISS GPU is skipped. The `env` part prints MISSING lines for anything a part needs and cannot import.
# To carry a missing package as wheels (/work/.library/device/README.md, Notes), here in the repo root:
#   echo /.whl/ >> .git/info/exclude        # (.gitignore already ignores /.whl/)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl NAME==VERSION                 # once per missing package and each missing dependency
# then call `run` with carry [".whl"]; this script installs .whl/*.whl into /tmp/site (pip --no-index --no-deps
# --target) and puts it on PYTHONPATH before anything else. The wheels count towards the 64 MiB working tree.
set -u
cd "$(dirname "$0")/.." || exit 1

SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;/^set -u/d'; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done
[ "${RAGBATCH_GPU_SMOKE:-0}" = 1 ] && SMOKE=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "WARNING: installing .whl/*.whl failed; going on with what is installed"
  fi
fi

RES=${OUT:-$(mktemp -d /tmp/ragbatch-gpu.XXXXXX)}
mkdir -p "$RES"
WORK=$(mktemp -d /tmp/ragbatch-gpu-home.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export RAGBATCH_HOME="$WORK/home" TMPDIR="$WORK" HF_HUB_DISABLE_PROGRESS_BARS=1   # nothing goes into the checkout

# Caps in seconds (each includes Python's start and imports). Full: 30 + 110 + 100 + generate (what is left,
# at most 220) + 20, each killed 5 s after its cap at the latest: under 480 s in all.
TOTAL=465
if [ "$SMOKE" = 1 ]; then
  SMOKE_ARG=--smoke; CAP_ENV=60; CAP_EMBED=90; CAP_SEARCH=60; CAP_GEN=90; CAP_REPORT=30; TOTAL=400
  [ "$(nproc)" -le 4 ] && export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false  # a shared CPU
else
  SMOKE_ARG=; CAP_ENV=30; CAP_EMBED=110; CAP_SEARCH=100; CAP_GEN=220; CAP_REPORT=20
fi

main() {
  echo "ragbatch GPU readiness $( [ "$SMOKE" = 1 ] && echo '(SMOKE: tiny sizes)' ) — $(date -u +%FT%TZ), python: $PY, results: $RES"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.mem --format=csv,noheader

  STATUS=()
  run_part() {  # run_part NAME CAP
    local name=$1 cap=$2 rc
    echo; echo "=== $name (cap ${cap}s, $((SECONDS))s elapsed) ==="
    timeout -k 5 "$cap" "$PY" benchmarks/gpu/main.py "$name" --results "$RES" --budget $((cap > 20 ? cap - 8 : cap)) $SMOKE_ARG
    rc=$?
    case $rc in
      0) ;;
      124|137) echo "!!! $name hit its ${cap}s cap and was stopped; rows it finished are kept" ;;
      3) [ "$name" = env ] || echo "!!! $name failed (exit $rc); going on" ;;
      *) echo "!!! $name failed (exit $rc); going on" ;;
    esac
    STATUS+=("$name=$rc")
    return $rc
  }

  run_part env "$CAP_ENV"
  if [ $? = 3 ]; then
    echo "no CUDA device visible: nothing to measure (bash benchmarks/gpu.sh --smoke runs the CPU smoke test)"
    return 3
  fi
  run_part embed "$CAP_EMBED"
  run_part search "$CAP_SEARCH"
  left=$((TOTAL - SECONDS - CAP_REPORT - 5))
  run_part generate $((left < CAP_GEN ? (left > 30 ? left : 30) : CAP_GEN))
  timeout -k 5 "$CAP_REPORT" "$PY" benchmarks/gpu/main.py report --results "$RES" --status "${STATUS[@]}"
  echo "total ${SECONDS}s; parts: ${STATUS[*]}; results in $RES"
  local bad=0 s
  for s in "${STATUS[@]}"; do [ "${s#*=}" = 0 ] || bad=1; done
  return $bad
}

main 2>&1 | tee -a "$RES/gpu.log"
exit "${PIPESTATUS[0]}"
