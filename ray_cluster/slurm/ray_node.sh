#!/bin/bash
# One Ray node of a Slurm job (the head, in the batch script; a worker, one srun task per node), in its own process
# group: TERM/INT (scancel, the batch script's cleanup) or the end of this script stop that whole group, so no raylet,
# GCS, object store or worker outlives the job.
#
#   ray_node.sh <ray executable> <port base> <ray start arguments...>   (--block is added: the node lives as long as
#   this script). Its agents' four ports are base + 10 * $SLURM_PROCID + 0..3: nodes sharing a host do not collide,
#   and with every port given the raylet need not wait for an agent to write its port file (a dynamic port), which
#   a slow agent start under load missed (raylet "Timed out waiting for file .../metrics_agent_port").
#
# Not `ray stop`: it kills every Ray process of this user on the machine, including another job's sharing the node.
set -u
ray_bin=$1 port=$(($2 + 10 * ${SLURM_PROCID:-0})); shift 2
alive() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {n++} END {exit n ? 0 : 1}'; }

pg=""
stop() {
  trap '' TERM INT; trap - EXIT   # a second SIGTERM (scancel signals every process of the job) must not cut this short
  [ -n "$pg" ] || return 0
  kill -TERM -- "-$pg" 2>/dev/null
  for _ in $(seq 50); do alive "$pg" || return 0; sleep 0.2; done   # `ray start --block` stops its node on TERM
  kill -KILL -- "-$pg" 2>/dev/null
}
trap 'stop; exit 143' TERM INT
trap stop EXIT

# A node that does not come up is started again (3 tries): `ray start` gives a raylet a fixed 30 s to register
# with the GCS (ray/_private/node.py), which a loaded node can miss.
for try in 1 2 3; do
  # setsid: ray start and everything it spawns (gcs_server, raylet, plasma, agents, workers) get a process group of
  # their own (a background child of a non-interactive shell is no group leader, so setsid needs no fork: pid = pgid)
  setsid "$ray_bin" start --block --num-cpus="${SLURM_CPUS_ON_NODE:-1}" --dashboard-agent-listen-port="$port" \
    --metrics-export-port=$((port + 1)) --dashboard-agent-grpc-port=$((port + 2)) --runtime-env-agent-port=$((port + 3)) \
    --disable-usage-stats "$@" &
  pg=$!
  started=$SECONDS
  wait "$pg"
  rc=$?
  stop
  trap 'stop; exit 143' TERM INT
  trap stop EXIT
  # --block returns only when the node died; a start that failed early (< 90 s) is worth another try
  if [ $((SECONDS - started)) -ge 90 ] || [ "$try" = 3 ]; then exit "$rc"; fi
  echo "quarry-slurm: Ray node on $(hostname) exited $rc during startup (try $try of 3); starting it again" >&2
done
