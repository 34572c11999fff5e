#!/usr/bin/env bash
# Raspberry Pi smoke test: cross-builds the gateway for aarch64-unknown-linux-gnu (release),
# runs `--help` and `keygen` under qemu-aarch64 and prints the stripped size.
# Installs what is missing (Debian: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user;
# rustup target aarch64-unknown-linux-gnu). Exits non-zero with a plain message if anything
# cannot be installed or fails; it never passes silently.
set -euo pipefail

fail() { echo "pi-smoke: FAILED: $*" >&2; exit 1; }
cd "$(dirname "$0")/../.."   # the workspace root

target=aarch64-unknown-linux-gnu
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-strip >/dev/null || need_apt+=(binutils-aarch64-linux-gnu)
command -v file >/dev/null || need_apt+=(file)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "pi-smoke: installing ${need_apt[*]}"
    command -v apt-get >/dev/null || fail "apt-get is not available; install ${need_apt[*]} by hand"
    $sudo apt-get update -qq || fail "apt-get update failed (no network or no permission)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" \
        || fail "cannot install ${need_apt[*]} with apt-get"
fi
command -v rustup >/dev/null || fail "rustup is not installed; the aarch64 target cannot be added"
if ! rustup target list --installed | grep -qx "$target"; then
    echo "pi-smoke: adding the Rust target $target"
    rustup target add "$target" || fail "cannot install the Rust target $target (rustup target add failed)"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
echo "pi-smoke: cross-building (release) for $target"
cargo build --release -p edge-gateway --target "$target" || fail "the cross build failed"

bin="${CARGO_TARGET_DIR:-target}/$target/release/edge-gateway"
[ -x "$bin" ] || fail "$bin was not produced"
file "$bin" 2>/dev/null | grep -q "aarch64" || fail "$bin is not an aarch64 binary"
run() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" "$@"; }
echo "pi-smoke: running --help under qemu-aarch64"
run --help | grep -q "edge-gateway" || fail "--help did not run under qemu-aarch64"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "pi-smoke: running keygen under qemu-aarch64"
run keygen --out "$tmp/pi.key" || fail "keygen did not run under qemu-aarch64"
mode="$(stat -c %a "$tmp/pi.key")"
[ "$mode" = 600 ] || fail "the key file has mode $mode, expected 600"
public="$(run key show --key "$tmp/pi.key")" || fail "key show did not run"
echo "pi-smoke: public key $public"
cp "$bin" "$tmp/stripped"
aarch64-linux-gnu-strip "$tmp/stripped"
size=$(stat -c %s "$tmp/stripped")
echo "pi-smoke: stripped aarch64 binary: $size bytes ($((size / 1024 / 1024)) MiB; target < 10 MiB)"
echo "pi-smoke: OK"
