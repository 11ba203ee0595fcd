#!/usr/bin/env bash
# Installs what the dev Vault and PostgreSQL tests need on a fresh Debian machine, and
# pre-builds the dev Vault so its slow first build shows here rather than timing out a
# test. Idempotent: a second run changes nothing and takes a second or two.
#
#   bash .ci/deps.sh        (as root, e.g. from .ci/run with CI=true)
#
# Steps:
#   1. PostgreSQL server binaries (initdb, pg_ctl, postgres under /usr/lib/postgresql/*/bin):
#      apt-get install postgresql when missing; a default cluster the package starts is
#      stopped again (the tests run their own private clusters on free ports).
#   2. The dev Vault (cmd/devvault, its own Go module): built into the user cache by
#      `go run ./internal/devvault/prebuild`; a cached binary for the same sources is reused.
set -euo pipefail

log() { printf '[deps] %s\n' "$*"; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

have_pg_server() {
	local d
	for d in /usr/lib/postgresql/*/bin; do
		if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
			log "PostgreSQL server binaries present in $d"
			return 0
		fi
	done
	return 1
}

run_as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "need root for: $*"
		return 1
	fi
}

stop_default_clusters() {
	command -v pg_lsclusters >/dev/null 2>&1 || return 0
	# pg_lsclusters: Ver Cluster Port Status Owner Data-directory Log-file
	pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _; do
		if [[ "$status" == online* ]]; then
			log "stopping the auto-started PostgreSQL cluster $ver/$name (port $port)"
			run_as_root pg_ctlcluster "$ver" "$name" stop || log "could not stop $ver/$name"
		fi
	done
}

# 1. PostgreSQL server.
if have_pg_server; then
	:
else
	log "PostgreSQL server binaries missing: installing the postgresql package"
	start=$SECONDS
	run_as_root apt-get update -qq
	run_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
	log "postgresql installed in $((SECONDS - start))s"
	stop_default_clusters
	have_pg_server || { log "postgresql installed but initdb/pg_ctl/postgres still not found"; exit 1; }
fi
if ! getent passwd postgres >/dev/null; then
	log "warning: no 'postgres' system user; tests running as root need it to run PostgreSQL"
fi

# 2. The dev Vault.
if ! command -v go >/dev/null 2>&1; then
	log "the go command is missing: cannot build the dev Vault"
	exit 1
fi
log "building the dev Vault if not cached ($(go version))"
start=$SECONDS
bin="$(go run ./internal/devvault/prebuild)"
log "dev Vault ready in $((SECONDS - start))s: $bin"
