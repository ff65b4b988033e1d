#!/usr/bin/env bash
# Runs a gin config on several GPU nodes, one process per node, with JAX's own runtime.
#
#   launch/gpu_multinode.sh --hosts=node0,node1 --port=1234 \
#     --gin_file=gin/runs/paper_bbf_t5_xl.gin --output_dir=/shared/runs/bbf [--dry_run]
#
# Node 0 is the coordinator. Each node gets --coordinator_address, --num_processes and its
# --process_id; gbair calls jax.distributed.initialize() with them, builds one mesh over
# every node's GPUs, and each process feeds its own rows of every global batch. Needs passwordless ssh, this checkout at the same
# path on every node (`make venv JAX_EXTRA=cuda12` there once), and a shared output_dir.
# --dry_run prints the commands and executes nothing.
set -euo pipefail
HOSTS="" PORT=1234 GIN_FILE="" OUTPUT_DIR="" DRY_RUN=0
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --hosts=*) HOSTS="${arg#*=}" ;;
    --port=*) PORT="${arg#*=}" ;;
    --gin_file=*) GIN_FILE="${arg#*=}" ;;
    --output_dir=*) OUTPUT_DIR="${arg#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --gin.*) EXTRA+=("$arg") ;;
    *) echo "gpu_multinode.sh: error: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
if [ -z "$HOSTS" ] || [ -z "$GIN_FILE" ] || [ -z "$OUTPUT_DIR" ]; then
  echo "gpu_multinode.sh: error: --hosts, --gin_file and --output_dir are required" >&2; exit 2
fi
IFS=, read -r -a NODES <<< "$HOSTS"
COORDINATOR="${NODES[0]}:$PORT"
for i in "${!NODES[@]}"; do
  CMD="cd $(pwd) && .venv/bin/gbair run --gin_file=$GIN_FILE --output_dir=$OUTPUT_DIR --coordinator_address=$COORDINATOR --num_processes=${#NODES[@]} --process_id=$i ${EXTRA[*]:-}"
  if [ "$DRY_RUN" = 1 ]; then echo "+ ssh ${NODES[$i]} $CMD &"; else ssh "${NODES[$i]}" "$CMD" & fi
done
[ "$DRY_RUN" = 1 ] || wait
