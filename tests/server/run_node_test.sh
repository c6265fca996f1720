#!/usr/bin/env bash
# CTest wrapper for the node tests in tests/server: runs `node --test FILE` with the built
# binary, or exits 77 (CTest's SKIP_RETURN_CODE) when node or the npm packages are missing --
# `bash scripts/setup` installs them (npm ci here). A browser test also needs Chromium.
#   run_node_test.sh STATELM_BINARY SOURCE_DIR TEST_FILE [needs-chromium]
set -uo pipefail
binary=$1 source_dir=$2 test_file=$3 needs=${4:-}
here="$source_dir/tests/server"
if ! command -v node >/dev/null; then echo "SKIP: node is not installed (bash scripts/setup)"; exit 77; fi
if [ ! -d "$here/node_modules/openai" ] || [ ! -d "$here/node_modules/playwright-core" ]; then
  echo "SKIP: $here/node_modules is missing (bash scripts/setup, or npm ci there)"; exit 77
fi
if [ "$needs" = "needs-chromium" ] && ! command -v "${STATELM_CHROMIUM:-chromium}" >/dev/null; then
  echo "SKIP: chromium is not installed (bash scripts/setup)"; exit 77
fi
cd "$here" && STATELM_BINARY="$binary" STATELM_SOURCE_DIR="$source_dir" exec node --test --test-reporter=spec "$test_file"
