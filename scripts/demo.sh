#!/usr/bin/env bash
# Sets everything up, then runs a real email job end to end with live progress: `offload demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/offload demo "$@"
