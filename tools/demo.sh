#!/usr/bin/env bash
# `make demo`: start a server hosting every bundled service on 127.0.0.1 (mTLS), query it, stop it cleanly.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
export GRPC_VERBOSITY=${GRPC_VERBOSITY:-ERROR}  # keep grpc core's own INFO lines out of the demo output
work=$(mktemp -d /tmp/grpc-helper-demo.XXXXXX)
tls="$work/tls"
server_pid=""

cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" && wait "$server_pid" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "TLS material (CA, server and client certificates)"
"$PY" -m grpc_helper.certs init "$tls" --admin demo

step "Server: python -m grpc_helper serve"
"$PY" -m grpc_helper serve --port 0 --port-file "$work/port" --tls-dir "$tls" --state-dir "$work/state" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "server did not start" >&2; exit 1; }
port=$(cat "$work/port")
tls_args=(--ca "$tls/ca.pem" --cert "$tls/demo.pem" --key "$tls/demo.key")

step "Info: python -m grpc_helper.info --port $port (mTLS)"
"$PY" -m grpc_helper.info --port "$port" "${tls_args[@]}"

jobs=("$PY" -m grpc_helper.jobs)
jobs_args=(--endpoint "127.0.0.1:$port" --tls-dir "$tls" --name demo)
step "Job runner: run a job, stream its logs, show its status"
job=$("${jobs[@]}" run "${jobs_args[@]}" -- sh -c 'for i in 1 2 3; do echo "line $i"; echo "warning $i" >&2; sleep 0.2; done')
echo "job id: $job"
"${jobs[@]}" logs "${jobs_args[@]}" -f "$job"
"${jobs[@]}" ps "${jobs_args[@]}" "$job"

grid=("$PY" -m grpc_helper.grid)
grid_args=(--endpoint "127.0.0.1:$port" "${tls_args[@]}")
step "Compute grid: start 2 workers, submit a batch, print results and status"
worker_pids=()
for n in 1 2; do
    "${grid[@]}" worker "${grid_args[@]}" --service demo --version 1 --description "demo worker $n" \
        grpc_helper.grid.handlers:echo &
    worker_pids+=($!)
done
"${grid[@]}" submit "${grid_args[@]}" --service demo --version 1 --timeout 30 alpha beta gamma delta epsilon
"${grid[@]}" status "${grid_args[@]}"
kill -INT "${worker_pids[@]}"
wait "${worker_pids[@]}"

step "Stop the server (SIGTERM, graceful)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
echo "demo finished"
