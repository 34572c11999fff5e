#!/usr/bin/env bash
# Raspberry Pi smoke test. Cross-builds the gateway for aarch64-unknown-linux-gnu with the `pi`
# profile (root Cargo.toml: release, opt-level "s", fat LTO, one codegen unit), then:
#   1. enforces the size limit: the stripped binary must be under 10 000 000 bytes;
#   2. under qemu-aarch64 runs --help, keygen and key show;
#   3. under qemu-aarch64 runs the gateway itself against a simulated home (meter-sim, built and
#      run natively): it polls the inverter, battery and meter over Modbus TCP, accounts 5-minute
#      intervals on a 60x clock, signs them and stores them in its outbox (no uplink is
#      configured, so they stay there); then `edge-gateway outbox`, also under qemu, lists the
#      readings and checks every signature against the gateway's key.
# Every wait has a deadline (the qemu gateway run at most 2 minutes); every failure says what
# failed and shows the relevant log.
# Installs what is missing (Debian: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user,
# binutils-aarch64-linux-gnu, file, jq, curl; rustup target aarch64-unknown-linux-gnu). Exits
# non-zero with a plain message if anything cannot be installed or fails; it never passes
# silently.
set -euo pipefail

fail() { echo "pi-smoke: FAILED: $*" >&2; exit 1; }
say() { echo "pi-smoke: $*"; }
cd "$(dirname "$0")/../.."   # the workspace root

target=aarch64-unknown-linux-gnu
profile=pi
limit_bytes=10000000
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-strip >/dev/null || need_apt+=(binutils-aarch64-linux-gnu)
command -v file >/dev/null || need_apt+=(file)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    command -v apt-get >/dev/null || fail "apt-get is not available; install ${need_apt[*]} by hand"
    $sudo apt-get update -qq || fail "apt-get update failed (no network or no permission)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" \
        || fail "cannot install ${need_apt[*]} with apt-get"
fi
command -v rustup >/dev/null || fail "rustup is not installed; the aarch64 target cannot be added"
if ! rustup target list --installed | grep -qx "$target"; then
    say "adding the Rust target $target"
    rustup target add "$target" || fail "cannot install the Rust target $target (rustup target add failed)"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
target_dir="${CARGO_TARGET_DIR:-target}"
say "cross-building (profile $profile) for $target"
cargo build --locked --profile "$profile" -p edge-gateway --bin edge-gateway --target "$target" \
    || fail "the cross build failed"
say "building meter-sim natively (the simulated home the Pi gateway will read)"
cargo build --locked -p meter-sim --bin meter-sim || fail "the native meter-sim build failed"

bin="$target_dir/$target/$profile/edge-gateway"
sim="$target_dir/debug/meter-sim"
[ -x "$bin" ] || fail "$bin was not produced"
[ -x "$sim" ] || fail "$sim was not produced"
file "$bin" 2>/dev/null | grep -q "aarch64" || fail "$bin is not an aarch64 binary"

tmp="$(mktemp -d)"
sim_pid=""
gw_pid=""
cleanup() {
    # Only the two processes this script started.
    for pid in $gw_pid $sim_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in $gw_pid $sim_pid; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# 1. The size limit, on the stripped binary.
cp "$bin" "$tmp/stripped"
aarch64-linux-gnu-strip "$tmp/stripped"
size=$(stat -c %s "$tmp/stripped")
say "stripped aarch64 binary: $size bytes (limit: under $limit_bytes bytes; headroom $((limit_bytes - size)) bytes)"
[ "$size" -lt "$limit_bytes" ] || fail "the stripped aarch64 gateway is $size bytes, over the $limit_bytes-byte limit for the Pi: trim features (cargo tree -e features -p edge-gateway --target $target) or dependencies before adding more to it"
# The size above includes the homeowner's local page (issue 18): its HTML, script and style
# sheet are compiled in, and so are argon2 and Home Assistant discovery.
grep -q 'data-live' "$tmp/stripped" && grep -q 'gm_local' "$tmp/stripped" \
    || fail "the local page's assets are not in the binary (edge-gateway/src/local_page/page.js)"
say "the local page and Home Assistant discovery are compiled in (counted in the size above)"

# 2. The CLI under qemu. Every qemu run has a deadline.
run() { timeout 60 qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" "$@"; }
say "running --help under qemu-aarch64"
run --help | grep -q "edge-gateway" || fail "--help did not run under qemu-aarch64"
say "running keygen under qemu-aarch64"
run keygen --out "$tmp/pi.key" || fail "keygen did not run under qemu-aarch64"
mode="$(stat -c %a "$tmp/pi.key")"
[ "$mode" = 600 ] || fail "the key file has mode $mode, expected 600"
public="$(run key show --key "$tmp/pi.key")" || fail "key show did not run under qemu-aarch64"
say "public key $public"

# 3. The gateway at work under qemu, against a simulated home on a 60x clock (a 5-minute
#    interval every 5 real seconds), starting at midday so the PV produces.
epoch="2026-06-21T11:00:00Z"
speed=60
anchor="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
say "starting meter-sim (one home, $speed x, from $epoch)"
"$sim" --homes 1 --base-port 0 --speed "$speed" --start "$epoch" \
    --manifest "$tmp/manifest.json" --control 127.0.0.1:0 --status-every 0 \
    > "$tmp/meter-sim.log" 2>&1 &
sim_pid=$!
# wait_for WHAT SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds, or fails naming WHAT.
wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        kill -0 "$sim_pid" 2>/dev/null || fail "meter-sim exited while waiting for $what; its log:
$(tail -30 "$tmp/meter-sim.log")"
        if [ -n "$gw_pid" ] && ! kill -0 "$gw_pid" 2>/dev/null; then
            fail "the aarch64 gateway exited while waiting for $what; its log:
$(tail -40 "$tmp/gateway.log")"
        fi
        sleep 0.2
    done
}
wait_for "meter-sim's manifest" 30 test -s "$tmp/manifest.json" \
    || fail "meter-sim wrote no manifest within 30 s; its log:
$(tail -30 "$tmp/meter-sim.log")"
device() { # device KIND: "host port unit" of the home's device of that kind
    jq -r --arg kind "$1" '.homes[0].devices[] | select(.kind == $kind) | "\(.host) \(.port) \(.unit)"' \
        "$tmp/manifest.json" | head -1
}
devices=""
for pair in inverter:inverter battery:battery meter:grid_meter; do
    kind="${pair%%:*}" role="${pair#*:}"
    host="" port="" unit=""
    read -r host port unit <<< "$(device "$kind")" || true
    [ -n "${port:-}" ] || fail "meter-sim's manifest has no $kind device: $(cat "$tmp/manifest.json")"
    devices+="
[[devices]]
name = \"$kind\"
role = \"$role\"
transport = \"modbus_tcp\"
host = \"$host\"
port = $port
unit = $unit
"
done
cat > "$tmp/gateway.toml" <<EOF
gateway_id = "gw-pi-smoke"
participant = "pi-smoke"
node = "f1"
interval_minutes = 5
key_path = "$tmp/pi.key"
outbox_path = "$tmp/outbox.db"
health_listen = "127.0.0.1:0"
poll_ms = 250
modbus_timeout_ms = 2000

[clock]
epoch = "$epoch"
speed = $speed
anchor = "$anchor"

[site]
inverter_w = 6000
$devices
EOF
say "running the aarch64 gateway under qemu-aarch64 (at most 2 minutes)"
timeout 120 qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" run --config "$tmp/gateway.toml" \
    > "$tmp/gateway.log" 2>&1 &
gw_pid=$!
health() { sed -n 's|.*running: /healthz and /metrics on http://\([0-9.:]*\).*|\1|p' "$tmp/gateway.log" | head -1; }
wait_for "the gateway to start" 60 grep -q "running: /healthz and /metrics" "$tmp/gateway.log" \
    || fail "the aarch64 gateway did not start within 60 s under qemu; its log:
$(tail -40 "$tmp/gateway.log")"
addr="$(health)"
say "gateway running, metrics on http://$addr/metrics"
signed() {
    curl -fsS --max-time 5 "http://$addr/metrics" 2>/dev/null \
        | sed -n 's/^gridmesh_gateway_readings_signed_total \([0-9]*\)$/\1/p'
}
three_signed() { [ "$(signed)" -ge 3 ] 2>/dev/null; }
wait_for "three signed readings" 90 three_signed \
    || fail "the aarch64 gateway signed $(signed) reading(s) in 90 s, expected 3 (one 5-minute interval every 5 s); its log:
$(tail -40 "$tmp/gateway.log")"
say "$(signed) readings signed; stopping the gateway (SIGTERM)"
kill -TERM "$gw_pid"
stopped() { ! kill -0 "$gw_pid" 2>/dev/null; }
wait_for "the gateway to stop" 30 stopped || fail "the aarch64 gateway did not stop within 30 s of SIGTERM"
wait "$gw_pid" || fail "the aarch64 gateway exited with status $? on SIGTERM; its log:
$(tail -40 "$tmp/gateway.log")"
gw_pid=""
kill "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
sim_pid=""

say "checking the outbox under qemu-aarch64 (edge-gateway outbox)"
run outbox --config "$tmp/gateway.toml" > "$tmp/outbox.txt" 2>&1 \
    || fail "edge-gateway outbox failed under qemu-aarch64:
$(cat "$tmp/outbox.txt")"
cat "$tmp/outbox.txt"
ok=$(grep -c "^reading .* gw-pi-smoke .* signature=ok$" "$tmp/outbox.txt" || true)
[ "$ok" -ge 3 ] || fail "the outbox holds $ok readings validly signed by gw-pi-smoke, expected at least 3"
grep -q "signature=BAD" "$tmp/outbox.txt" && fail "the outbox holds a reading with a bad signature"
# Real work was done: the inverter produced at midday, and the gateway measured it.
grep -qE "^reading .* pv=[1-9][0-9]* " "$tmp/outbox.txt" \
    || fail "no reading in the outbox measured any PV energy at midday: the gateway did not read the simulated inverter"
grep -q "all $ok shown reading(s) signed by $public" "$tmp/outbox.txt" \
    || fail "the readings were not signed with the key made by keygen ($public)"
say "OK ($size bytes stripped; $ok signed readings in the outbox)"
