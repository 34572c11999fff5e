#!/usr/bin/env bash
# Makes sure the real services the tests need are reachable:
#   PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`) and Mosquitto on 127.0.0.1:1883.
# Starts them when installed but stopped; installs them with apt-get when missing.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}
apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "cannot install $*: this machine has no apt-get; install them yourself and re-run"; exit 1
  fi
  [ -n "${GRIDMESH_APT_UPDATED:-}" ] || { apt-get update -qq; export GRIDMESH_APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      log "PostgreSQL is not installed; installing it (apt-get install postgresql)"
      apt_install postgresql
    fi
    local version; version=$(ls /etc/postgresql | sort -V | tail -1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
      log "allowing trust auth from 127.0.0.1 in $hba"
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
      || pg_ctlcluster "$version" main start
    wait_port 5432 || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
  fi
  if command -v psql >/dev/null; then
    if ! psql -h 127.0.0.1 -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; then
      log "creating database test"
      psql -h 127.0.0.1 -U postgres -d postgres -tAc 'create database test' >/dev/null
    fi
  fi
  log "PostgreSQL ready on 127.0.0.1:5432"
}

ensure_mosquitto() {
  if ! port_open 1883; then
    if ! command -v mosquitto >/dev/null; then
      log "Mosquitto is not installed; installing it (apt-get install mosquitto)"
      apt_install mosquitto mosquitto-clients
    fi
    local conf=/etc/mosquitto/mosquitto.conf
    if ! grep -q '^listener 1883' "$conf" 2>/dev/null; then
      printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' >> "$conf"
    fi
    log "starting Mosquitto"
    mkdir -p /run/mosquitto && chown mosquitto /run/mosquitto 2>/dev/null || true
    mosquitto -d -c "$conf"
    wait_port 1883 || { log "Mosquitto did not come up on 127.0.0.1:1883"; exit 1; }
  fi
  log "Mosquitto ready on 127.0.0.1:1883"
}

ensure_postgres
ensure_mosquitto
