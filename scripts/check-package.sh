#!/usr/bin/env bash
# CI check of the Debian package and the systemd units: builds the .deb
# (scripts/build-deb.sh), installs it with dpkg -i, runs the installed
# /usr/bin/walrcv --version and the pg_receivewal symlink's --version, checks
# the installed units with `systemd-analyze verify` (any message fails), the
# man pages, completions, README and the guide's sources, then removes the
# package (dpkg -r) so the machine is left as found. Installs systemd's tools with apt if missing. Refuses to
# run when a walrcv package is already installed (it would be replaced).
# Run as root. Respects CARGO_TARGET_DIR. Prints its time last.
#
#   scripts/check-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
log() { echo "check-package: $*" >&2; }

if dpkg-query -W -f='${Status}' walrcv 2>/dev/null | grep -q 'install ok installed'; then
    log "a walrcv package is already installed: not replacing it"
    exit 1
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
    log "apt-get install systemd (for systemd-analyze)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

deb=$(scripts/build-deb.sh | tail -n 1)
log "built $deb ($(du -h "$deb" | cut -f1))"

dpkg -i "$deb" >/dev/null
trap 'dpkg -r walrcv >/dev/null' EXIT

/usr/bin/walrcv --version
/usr/lib/walrcv/bin/pg_receivewal --version | grep '^pg_receivewal (walrcv '
# The symlink is what Barman's path_prefix finds.
[ "$(readlink -f /usr/lib/walrcv/bin/pg_receivewal)" = /usr/bin/walrcv ]

# The installed units, the template through an instance. verify exits 0 on
# warnings: any output fails.
# The Documentation= man pages are checked too when man is installed.
man_check=()
command -v man >/dev/null 2>&1 || man_check=(--man=no)
verify_out=$(systemd-analyze verify "${man_check[@]}" walrcv.service walrcv@ci.service 2>&1) || {
    echo "$verify_out" >&2
    exit 1
}
if [ -n "$verify_out" ]; then
    echo "$verify_out" >&2
    log "systemd-analyze verify printed warnings"
    exit 1
fi
log "systemd-analyze verify: walrcv.service and walrcv@.service are clean"

for f in /usr/share/man/man1/walrcv.1.gz /usr/share/man/man1/walrcv-stream.1.gz \
    /usr/share/bash-completion/completions/walrcv /usr/share/zsh/vendor-completions/_walrcv \
    /usr/share/fish/vendor_completions.d/walrcv.fish /usr/share/doc/walrcv/examples/walrcv.env \
    /usr/share/doc/walrcv/README.md /usr/share/doc/walrcv/docs/src/SUMMARY.md \
    /usr/share/doc/walrcv/docs/src/production.md; do
    [ -s "$f" ] || {
        log "missing from the package: $f"
        exit 1
    }
done
zcat /usr/share/man/man1/walrcv-stream.1.gz | grep -q 'receive\\-timeout'

dpkg -r walrcv >/dev/null
trap - EXIT
if [ -e /usr/bin/walrcv ] || [ -e /usr/lib/walrcv ]; then
    log "dpkg -r left files behind"
    exit 1
fi
log "ok in $(($(date +%s) - started)) s (installed, ran, verified, removed)"
