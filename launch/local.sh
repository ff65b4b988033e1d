#!/usr/bin/env bash
# Runs a gin config on this machine (CPU or local GPUs), setting up .venv first.
#
#   launch/local.sh --gin_file=gin/runs/quickstart.gin --output_dir=runs/quickstart [--gin.X=V ...] [--dry_run]
#
# --dry_run prints the commands and executes nothing.
set -euo pipefail
DRY_RUN=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--dry_run" ]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done
cd "$(dirname "$0")/.."
run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
run make venv
run .venv/bin/gbair run "${ARGS[@]}"
