#!/usr/bin/env bash
# The test command (README, .ci/run): set up if needed, then run the whole suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_ui.py drives Debian's chromium (/usr/bin/chromium) with Playwright; install it when we can.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "scripts/test.sh: could not install chromium with apt-get: tests/test_ui.py will be skipped"
  else
    echo "scripts/test.sh: chromium is not installed and this is not root: tests/test_ui.py will be skipped" \
      "(sudo apt-get install chromium)"
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
python -m pytest -q "$@"
