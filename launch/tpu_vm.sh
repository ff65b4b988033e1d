#!/usr/bin/env bash
# Runs a gin config on every worker of a Cloud TPU VM (slice or pod).
#
#   launch/tpu_vm.sh --name=gbair-v4-32 --zone=us-central2-b --accelerator=v4-32 \
#     --gin_file=gin/runs/paper_bbf_t5_xxl.gin --output_dir=gs://BUCKET/runs/bbf [--dry_run]
#
# Steps: create the TPU VM (skipped if it exists), copy this checkout to every worker,
# install (make venv with jax[tpu]), then `gbair run --multihost` on all workers at once;
# jax.distributed.initialize() finds the pod's coordinator by itself on TPU VMs.
# --dry_run prints the commands and executes nothing.
set -euo pipefail
NAME="" ZONE="" ACCELERATOR="v4-8" VERSION="tpu-ubuntu2204-base" GIN_FILE="" OUTPUT_DIR="" DRY_RUN=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --accelerator=*) ACCELERATOR="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --gin_file=*) GIN_FILE="${arg#*=}" ;;
    --output_dir=*) OUTPUT_DIR="${arg#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --gin.*) EXTRA+=("$arg") ;;
    *) echo "tpu_vm.sh: error: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
for required in NAME ZONE GIN_FILE OUTPUT_DIR; do
  if [ -z "${!required}" ]; then
    echo "tpu_vm.sh: error: --$(echo "$required" | tr 'A-Z' 'a-z') is required" >&2; exit 2
  fi
done
run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
TPU=(gcloud compute tpus tpu-vm)
if [ "$DRY_RUN" = 1 ] || ! "${TPU[@]}" describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  run "${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$VERSION"
fi
run "${TPU[@]}" scp --recurse --worker=all --zone="$ZONE" "$(pwd)" "$NAME:~/gbair_jax"
run "${TPU[@]}" ssh "$NAME" --worker=all --zone="$ZONE" --command="cd ~/gbair_jax && make venv JAX_EXTRA=tpu"
run "${TPU[@]}" ssh "$NAME" --worker=all --zone="$ZONE" --command="cd ~/gbair_jax && .venv/bin/gbair run --multihost --gin_file=$GIN_FILE --output_dir=$OUTPUT_DIR ${EXTRA[*]:-}"
