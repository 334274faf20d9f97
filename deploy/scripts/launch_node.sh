#!/usr/bin/env bash
# One machine's part of a (multi-node) `ldu train`: `accelerate launch` with this machine's rank,
# and a graceful stop that a scheduler can rely on. Slurm (deploy/slurm/train.sbatch) and
# Kubernetes (deploy/k8s/train-jobset.yaml) both run it, once per machine.
#
#   launch_node.sh RECIPE [key=value ...]        arguments go to `ldu train` unchanged
#
# Environment (defaults in brackets):
#   LDU_ACCELERATE_CONFIG   [deploy/accelerate/single.yaml]  a file from deploy/accelerate/
#   LDU_NUM_MACHINES [1]   LDU_PROCS_PER_MACHINE [1]
#   LDU_MACHINE_RANK  [Slurm's SLURM_NODEID, else an indexed Kubernetes Job's JOB_COMPLETION_INDEX, else 0]
#   LDU_MAIN_IP [127.0.0.1]  LDU_MAIN_PORT [29500]   rendezvous on the first machine
#   LDU_STOP_FILE           optional: when this file appears, stop as on SIGTERM
#
# Stopping: on SIGTERM, SIGINT or SIGUSR1 (or LDU_STOP_FILE), the training processes get one
# SIGUSR1: they finish the current step, commit a checkpoint, flush tracking and exit 0. The
# launcher itself ignores SIGTERM and SIGUSR1 so that a signal sent to every process (Slurm
# signals a whole job step) cannot take it down before its workers have checkpointed.
#
# Exit status: 0 the run is complete; 75 (EX_TEMPFAIL) stopped early after a checkpoint: run the
# same command again to resume (run.resume=auto); anything else: the launcher's failure.
set -euo pipefail

readonly EXIT_RESUMABLE=75
config="${LDU_ACCELERATE_CONFIG:-deploy/accelerate/single.yaml}"
num_machines="${LDU_NUM_MACHINES:-1}"
machine_rank="${LDU_MACHINE_RANK:-${SLURM_NODEID:-${JOB_COMPLETION_INDEX:-0}}}"
procs_per_machine="${LDU_PROCS_PER_MACHINE:-1}"
main_ip="${LDU_MAIN_IP:-127.0.0.1}"
main_port="${LDU_MAIN_PORT:-29500}"
stop_file="${LDU_STOP_FILE:-}"

if [[ $# -lt 1 ]]; then
  echo "usage: launch_node.sh RECIPE [key=value ...]" >&2
  exit 2
fi

launch=(
  accelerate launch --config_file "$config"
  --num_machines "$num_machines" --machine_rank "$machine_rank"
  --num_processes "$((num_machines * procs_per_machine))"
  --main_process_ip "$main_ip" --main_process_port "$main_port"
  -m continual_ldu.cli train "$@"
)
echo "launch_node: machine ${machine_rank}/${num_machines}: ${launch[*]}"

# The launcher (torchrun's agent) must not handle SIGTERM itself: it would forward a second
# SIGTERM to workers already checkpointing, and a second signal of a kind is a hard stop there.
(
  trap '' TERM USR1
  export PET_SIGNALS_TO_HANDLE="SIGINT,SIGHUP,SIGQUIT"
  exec "${launch[@]}"
) &
launcher=$!

stopping=0   # a stop was requested
delivered=0  # the training processes got their one SIGUSR1
deliver_stop() {
  # The training processes are the launcher's children (one per GPU, or the single process);
  # before they exist pkill matches nothing and the loop below tries again.
  if [[ "$delivered" == 0 ]] && pkill -USR1 -P "$launcher"; then
    delivered=1
    echo "launch_node: stop requested; the training processes checkpoint and exit"
  fi
}
# shellcheck disable=SC2329  # called by the trap below
request_stop() {
  stopping=1
  deliver_stop
}
trap request_stop TERM INT USR1

while kill -0 "$launcher" 2>/dev/null; do
  if [[ -n "$stop_file" && -e "$stop_file" ]]; then
    stopping=1
  fi
  if [[ "$stopping" == 1 ]]; then
    deliver_stop
  fi
  sleep 2 &
  wait $! || true  # interrupted by a trapped signal: the loop checks again
done
status=0
wait "$launcher" || status=$?

if [[ "$status" == 0 && "$stopping" == 1 ]]; then
  echo "launch_node: checkpoint committed; rerun the same command to resume"
  exit "$EXIT_RESUMABLE"
fi
exit "$status"
