#!/usr/bin/env bash
# Installs the edge gateway on a Raspberry Pi (or any systemd Linux): binary, unprivileged
# user, config, state directory with a fresh key, systemd unit.
#
#   sudo packaging/install.sh [--binary PATH] [--root DIR] [--no-systemctl] [--no-user]
#
# --root installs into DIR instead of / (for packaging and tests); --no-systemctl and
# --no-user skip the steps that need a running systemd or root.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
binary=""
root=""
systemctl=1
create_user=1
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --root) root="$2"; shift 2 ;;
        --no-systemctl) systemctl=0; shift ;;
        --no-user) create_user=0; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    for candidate in "$here/../../target/aarch64-unknown-linux-gnu/release/edge-gateway" \
                     "$here/../../target/release/edge-gateway" "$here/edge-gateway"; do
        if [ -x "$candidate" ]; then binary="$candidate"; break; fi
    done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    echo "install.sh: no edge-gateway binary found; build it (cargo build --release -p edge-gateway) or pass --binary PATH" >&2
    exit 1
fi

user=gridmesh
if [ "$create_user" = 1 ] && ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/gridmesh-gateway --shell /usr/sbin/nologin --groups dialout "$user"
fi

install -d -m 0755 "$root/usr/local/bin" "$root/etc/gridmesh" "$root/etc/systemd/system"
install -m 0755 "$binary" "$root/usr/local/bin/edge-gateway"
install -m 0644 "$here/edge-gateway.service" "$root/etc/systemd/system/edge-gateway.service"
if [ ! -e "$root/etc/gridmesh/gateway.toml" ]; then
    install -m 0640 "$here/gateway.example.toml" "$root/etc/gridmesh/gateway.toml"
fi
# The local page's password: GRIDMESH_PAGE_PASSWORD, or a random one printed once below. Only
# its argon2id hash goes into the config; an existing hash is kept.
config="$root/etc/gridmesh/gateway.toml"
page_password=""
if ! grep -qE '^[[:space:]]*password_hash[[:space:]]*=' "$config"; then
    if [ -n "${GRIDMESH_PAGE_PASSWORD:-}" ]; then
        page_password="$GRIDMESH_PAGE_PASSWORD"
        hash=$(printf '%s\n' "$page_password" | "$root/usr/local/bin/edge-gateway" hash-password)
    else
        password_file=$(mktemp)
        hash=$("$root/usr/local/bin/edge-gateway" hash-password --generate 2>"$password_file")
        page_password=$(sed -n 's/^password: //p' "$password_file")
        rm -f "$password_file"
    fi
    if grep -q '^\[local_page\]' "$config"; then
        # Right under the [local_page] header (the hash has no characters awk treats specially
        # in a -v-free print).
        HASH="$hash" awk '{ print } /^\[local_page\]/ { print "password_hash = \"" ENVIRON["HASH"] "\"" }' \
            "$config" > "$config.new" && cat "$config.new" > "$config" && rm -f "$config.new"
    else
        printf '\n[local_page]\nlisten = "0.0.0.0:8090"\npassword_hash = "%s"\n' "$hash" >> "$config"
    fi
fi
install -d -m 0700 "$root/var/lib/gridmesh-gateway"
key="$root/var/lib/gridmesh-gateway/gateway.key"
if [ ! -e "$key" ]; then
    "$root/usr/local/bin/edge-gateway" keygen --out "$key"
fi
if [ "$create_user" = 1 ]; then
    chown -R "$user:$user" "$root/var/lib/gridmesh-gateway"
    chgrp "$user" "$root/etc/gridmesh/gateway.toml"
fi
echo "public key (register it with: edge-gateway enroll --config /etc/gridmesh/gateway.toml):"
"$root/usr/local/bin/edge-gateway" key show --key "$key"
if [ -n "$page_password" ]; then
    address=$(hostname -I 2>/dev/null | awk '{ print $1 }')
    echo "local page: http://${address:-<this Pi>}:8090  password: $page_password"
    echo "  (shown once; only its hash is stored. A new one: edge-gateway hash-password, then set [local_page] password_hash)"
fi
if [ "$systemctl" = 1 ]; then
    systemctl daemon-reload
    systemctl enable --now edge-gateway.service
    echo "edge-gateway is running: systemctl status edge-gateway; curl http://127.0.0.1:9100/healthz"
else
    echo "installed under ${root:-/}; enable with: systemctl enable --now edge-gateway.service"
fi
