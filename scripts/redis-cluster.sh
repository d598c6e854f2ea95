#!/usr/bin/env bash
# Starts (or stops) a 3-master Redis Cluster on loopback for the tests and the flash-sale demo.
#   scripts/redis-cluster.sh start   # idempotent: returns at once when the cluster is already up
#   scripts/redis-cluster.sh stop
# Ports: MESH_CLUSTER_PORTS (default "7101 7102 7103"); data under ${TMPDIR:-/tmp}/mesh-redis-cluster.
# Nothing is persisted (no RDB, no AOF): the tests build every key they need.
set -euo pipefail

ports=(${MESH_CLUSTER_PORTS:-7101 7102 7103})
dir="${TMPDIR:-/tmp}/mesh-redis-cluster"
mkdir -p "$dir"

cluster_ok() {
  for port in "${ports[@]}"; do
    redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

stop() {
  for port in "${ports[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -f "$dir"/nodes-*.conf
}

start() {
  if cluster_ok; then
    echo "redis cluster: up on ${ports[*]}"
    return 0
  fi
  command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
  stop
  for port in "${ports[@]}"; do
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis-$port.log" \
      </dev/null >/dev/null 2>&1 9>&-
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 1; }
  for _ in $(seq 1 100); do
    if cluster_ok; then echo "redis cluster: started on ${ports[*]}"; return 0; fi
    sleep 0.1
  done
  echo "redis cluster did not reach cluster_state:ok; logs in $dir" >&2
  exit 1
}

case "${1:-start}" in
  start)
    # One starter at a time (test processes call this concurrently).
    exec 9>"$dir/lock"
    flock 9
    start
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
