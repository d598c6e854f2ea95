#!/usr/bin/env bash
# Smoke test through a real client: builds `inventory-mesh`, runs the whole mesh in one process on
# embedded defaults (SQLite in a temp dir, in-process counters) on free loopback ports, and drives
# it with grpcurl (server reflection, as the platform team does): health, list, describe and one
# real call per service, asserting on the exact output, and GET /metrics with curl. Prints
# PASS/FAIL per check; exits non-zero on any failure. Needs .tools/bin/grpcurl (`make tools`).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
grpcurl="$repo_root/.tools/bin/grpcurl"
binary="${CARGO_TARGET_DIR:-$repo_root/target}/debug/inventory-mesh"
readonly health_timeout_seconds=60
readonly services=(availability reservation sourcing replenishment)

if [[ ! -x "$grpcurl" ]]; then
  echo "grpcurl-smoke: FAIL: $grpcurl is missing; run \`make tools\` (scripts/install-tools.sh)" >&2
  exit 1
fi

# `make test` runs nextest first, which builds target/debug/inventory-mesh for the cli crate's
# integration tests; building it again with `cargo build -p` would re-resolve features and rebuild
# many dependencies. Build only when the binary is missing or older than the sources.
if [[ ! -x "$binary" ]] || [[ -n "$(find "$repo_root/cli" "$repo_root/services" "$repo_root/libs" "$repo_root/proto" -newer "$binary" -type f -print -quit)" ]]; then
  echo "grpcurl-smoke: cargo build -p inventory-mesh"
  (cd "$repo_root" && cargo build -p inventory-mesh)
fi
if [[ ! -x "$binary" ]]; then
  echo "grpcurl-smoke: FAIL: $binary was not built" >&2
  exit 1
fi

work_dir="$(mktemp -d)"
mesh_log="$work_dir/mesh.log"
mesh_pid=""

stop_mesh() {
  if [[ -n "$mesh_pid" ]] && kill -0 "$mesh_pid" 2>/dev/null; then
    kill -TERM "$mesh_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$mesh_pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$mesh_pid" 2>/dev/null || true
    wait "$mesh_pid" 2>/dev/null || true
  fi
  mesh_pid=""
}
cleanup() {
  stop_mesh
  rm -rf "$work_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Four free loopback ports: bound together so they differ, released just before the mesh binds.
read -r -a ports < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(4)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
')
declare -A addr
for i in "${!services[@]}"; do
  addr[${services[$i]}]="127.0.0.1:${ports[$i]}"
done

echo "grpcurl-smoke: starting \`inventory-mesh run\` in $work_dir" \
  "(availability ${addr[availability]}, reservation ${addr[reservation]}," \
  "sourcing ${addr[sourcing]}, replenishment ${addr[replenishment]})"
(
  cd "$work_dir"
  # Embedded mode: no Redis or Postgres from the caller's environment (CI exports both), and no
  # stray mesh settings.
  unset REDIS_URL DATABASE_URL REDIS_KEY_PREFIX MESH_CONFIG
  while IFS= read -r name; do
    unset "$name"
  done < <(compgen -e | grep '^MESH__' || true)
  export MESH__DATABASE__URL="sqlite://$work_dir/mesh.sqlite?mode=rwc"
  for service in "${services[@]}"; do
    export "MESH__${service^^}__LISTEN_ADDR=${addr[$service]}"
  done
  export MESH__PEERS__AVAILABILITY="http://${addr[availability]}"
  export MESH__PEERS__RESERVATION="http://${addr[reservation]}"
  export MESH__PEERS__REPLENISHMENT="http://${addr[replenishment]}"
  # A short drain keeps the SIGTERM check at the end quick; the path is still exercised.
  export MESH__SHUTDOWN__DRAIN_DELAY=100ms
  exec "$binary" run
) >"$mesh_log" 2>&1 &
mesh_pid=$!

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "PASS $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL $1"
  local line
  if [[ -n "${2:-}" ]]; then
    while IFS= read -r line; do
      printf '     | %s\n' "$line"
    done <<<"$2"
  fi
}

# call SERVICE ARGS...: `grpcurl -plaintext ADDRESS ARGS...` against SERVICE, stderr included.
call() {
  local service="$1"
  shift
  "$grpcurl" -plaintext -max-time 10 "${addr[$service]}" "$@" 2>&1
}
# rpc SERVICE METHOD JSON: one unary call through reflection.
rpc() {
  "$grpcurl" -plaintext -max-time 10 -d "$3" "${addr[$1]}" "$2" 2>&1
}

# expect NAME EXPECTED OUTPUT RC: passes when RC is 0 and OUTPUT contains EXPECTED (if given).
expect() {
  local name="$1" expected="$2" output="$3" rc="$4"
  if [[ "$rc" -ne 0 ]]; then
    fail "$name (exit $rc)" "$output"
  elif [[ -n "$expected" ]] && ! grep -qF -- "$expected" <<<"$output"; then
    fail "$name (no '$expected' in the output)" "$output"
  else
    pass "$name"
  fi
}

summary() {
  echo "grpcurl-smoke: $passed passed, $failed failed"
  if [[ $failed -ne 0 ]]; then
    echo "grpcurl-smoke: last lines of the mesh's log:"
    tail -n 40 "$mesh_log" | sed 's/^/     | /'
    exit 1
  fi
}

# --- health: every service SERVING -------------------------------------------------------------
deadline=$((SECONDS + health_timeout_seconds))
for service in "${services[@]}"; do
  while true; do
    output="$(call "$service" grpc.health.v1.Health/Check)" && rc=0 || rc=$?
    if [[ $rc -eq 0 ]] && grep -qF '"status": "SERVING"' <<<"$output"; then
      pass "$service: grpc.health.v1.Health/Check is SERVING"
      break
    fi
    if ! kill -0 "$mesh_pid" 2>/dev/null; then
      fail "$service: health (the mesh exited)" "$output"
      summary
    fi
    if ((SECONDS >= deadline)); then
      fail "$service: health not SERVING within ${health_timeout_seconds}s" "$output"
      summary
    fi
    sleep 0.5
  done
done

# --- reflection: list and describe -------------------------------------------------------------
declare -A service_name=(
  [availability]=availability.v1.AvailabilityService
  [reservation]=reservation.v1.ReservationService
  [sourcing]=sourcing.v1.SourcingService
  [replenishment]=replenishment.v1.ReplenishmentService
)
for service in "${services[@]}"; do
  name="${service_name[$service]}"
  output="$(call "$service" list)" && rc=0 || rc=$?
  if [[ $rc -eq 0 ]] && grep -qxF -- "$name" <<<"$output"; then
    pass "$service: list includes $name"
  else
    fail "$service: list includes $name (exit $rc)" "$output"
  fi
  output="$(call "$service" describe "$name")" && rc=0 || rc=$?
  expect "$service: describe $name" "$name is a service" "$output" "$rc"
done

# --- one real call per service, in an order where each result is known -------------------------
output="$(rpc availability availability.v1.AvailabilityService/UpsertLocations \
  '{"locations":[{"locationId":"L1","type":"LOCATION_TYPE_DC","position":{"lat":-23.5,"lon":-46.6},"priority":1}]}')" && rc=0 || rc=$?
expect "availability: UpsertLocations upserts L1" '"upserted": 1' "$output" "$rc"

output="$(rpc availability availability.v1.AvailabilityService/IngestEvents \
  '{"events":[{"eventId":"e1","type":"EVENT_TYPE_RECEIPT","cell":{"sku":"A","locationId":"L1"},"quantityUnits":"5","occurredAt":"2026-01-01T00:00:00Z"}]}')" && rc=0 || rc=$?
expect "availability: IngestEvents applies a receipt of 5 A at L1" 'EVENT_OUTCOME_APPLIED' "$output" "$rc"

output="$(rpc reservation reservation.v1.ReservationService/CreateReservation \
  '{"reservationId":"r1","lines":[{"sku":"A","locationId":"L1","quantityUnits":"2"}]}')" && rc=0 || rc=$?
expect "reservation: CreateReservation holds 2 A at L1" 'RESERVATION_STATUS_HELD' "$output" "$rc"

output="$(rpc availability availability.v1.AvailabilityService/GetCellAtp \
  '{"cells":[{"sku":"A","locationId":"L1"}]}')" && rc=0 || rc=$?
expect "availability: GetCellAtp shows 5 - 2 = 3 A at L1" '"atpUnits": "3"' "$output" "$rc"

output="$(rpc availability availability.v1.AvailabilityService/UpsertChannels \
  '{"channels":[{"channelId":"web","locationIds":["L1"]}]}')" && rc=0 || rc=$?
expect "availability: UpsertChannels creates channel web" '"upserted": 1' "$output" "$rc"

output="$(rpc sourcing sourcing.v1.SourcingService/SourceOrder \
  '{"orderId":"o1","channelId":"web","lines":[{"sku":"A","quantityUnits":"1"}],"dryRun":true,"allowSplit":true}')" && rc=0 || rc=$?
expect "sourcing: SourceOrder (dry run) picks L1" '"locationId": "L1"' "$output" "$rc"

output="$(rpc replenishment replenishment.v1.ReplenishmentService/ListAlerts '{}')" && rc=0 || rc=$?
expect "replenishment: ListAlerts succeeds" '' "$output" "$rc"

output="$(rpc replenishment replenishment.v1.ReplenishmentService/RunReplenishment '{}')" && rc=0 || rc=$?
expect "replenishment: RunReplenishment succeeds" '' "$output" "$rc"

# Prometheus scrapes GET /metrics (HTTP/1.1) on the same ports as gRPC.
output="$(curl -sS --max-time 10 "http://${addr[reservation]}/metrics" 2>&1)" && rc=0 || rc=$?
expect "reservation: GET /metrics serves the sweeper's counters" 'inventory_mesh_holds_expired_total 0' "$output" "$rc"
# ...and nothing else over HTTP/1: an RPC posted over HTTP/1.1 (as a web page could) is refused.
output="$(curl -sS --max-time 10 --http1.1 -o /dev/null -w '%{http_code}' -X POST -H 'content-type: text/plain' \
  --data-binary x "http://${addr[reservation]}/reservation.v1.ReservationService/CreateReservation" 2>&1)" && rc=0 || rc=$?
expect "reservation: an RPC over HTTP/1.1 gets 505" '505' "$output" "$rc"
# RPCs are counted by method and code; a method no service has is counted as unknown.
curl -sS --max-time 10 --http2-prior-knowledge -o /dev/null -H 'content-type: application/grpc' -H 'te: trailers' \
  --data-binary '' "http://${addr[reservation]}/made.Up/Method" >/dev/null 2>&1 || true
output="$(curl -sS --max-time 10 "http://${addr[reservation]}/metrics" 2>&1)" && rc=0 || rc=$?
expect "reservation: /metrics counts CreateReservation OK" \
  'inventory_mesh_grpc_server_handled_total{grpc_code="OK",grpc_method="CreateReservation",grpc_service="reservation.v1.ReservationService"} 1' \
  "$output" "$rc"
expect "reservation: /metrics counts an unknown method as unknown" \
  'inventory_mesh_grpc_server_handled_total{grpc_code="Unimplemented",grpc_method="unknown",grpc_service="unknown"} 1' \
  "$output" "$rc"

# --- graceful shutdown on SIGTERM --------------------------------------------------------------
kill -TERM "$mesh_pid"
stopped=false
for _ in $(seq 1 120); do
  if ! kill -0 "$mesh_pid" 2>/dev/null; then
    stopped=true
    break
  fi
  sleep 0.25
done
if $stopped; then
  wait "$mesh_pid" && rc=0 || rc=$?
  mesh_pid=""
  if [[ $rc -eq 0 ]]; then
    pass "mesh exits 0 after SIGTERM"
  else
    fail "mesh exits 0 after SIGTERM (exit $rc)"
  fi
else
  fail "mesh exits within 30s of SIGTERM"
fi

summary
