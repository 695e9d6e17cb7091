#!/usr/bin/env bash
# Footprint of the real binary: start-up time to the first 200 on /healthz, and resident
# memory (VmRSS, VmHWM from /proc) idle and after a load run against it.
#
#   cargo build --release && benches/footprint.sh [DATABASE]
#
# DATABASE defaults to a fresh file; pass one made by
# `cargo run --release --example loadgen -- --scenario startup --db FILE --runs 0`
# to measure with 1,000,000 past requests. Talks only to 127.0.0.1; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/jitgate
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
db=${1:-$dir/jitgate.db}
port=$(( 20000 + RANDOM % 20000 ))
cat > "$dir/jitgate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[database]
url = "sqlite://$db"
[slack]
api_url = "http://127.0.0.1:9/api"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["UAPPROVER1"]
adapter = "bench"
[adapters.bench]
type = "noop"
TOML
export SLACK_BOT_TOKEN=xoxb-footprint SLACK_SIGNING_SECRET=footprint JITGATE_LOG=warn
start=$(date +%s%N)
"$bin" --config "$dir/jitgate.toml" serve 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 5000); do
  if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
  sleep 0.001
done
ready=$(date +%s%N)
echo "start-up to first 200 on /healthz: $(( (ready - start) / 1000000 )) ms (process spawn included)"
sleep 5
grep -E 'VmRSS|VmHWM' /proc/$pid/status | sed 's/^/idle after 5 s: /'
