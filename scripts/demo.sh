#!/usr/bin/env bash
# The main job on a fresh machine: set up, index the demo corpus, answer the demo questions, print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ragbatch demo "$@"
