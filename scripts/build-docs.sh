#!/usr/bin/env bash
# Builds the user guide (docs/, mdBook) into docs/book/ and checks its internal
# links and README.md's (scripts/check-doc-links.sh): a broken relative link, a
# missing #anchor or a chapter missing from docs/src/SUMMARY.md fails.
# Installs mdbook with `cargo install --locked` if missing (a few minutes, once;
# a second or so when it is there). Respects CARGO_TARGET_DIR.
#
#   scripts/build-docs.sh            (then open docs/book/index.html, or `mdbook serve docs`)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-docs: $*" >&2; }

# The version the guide is built and checked with.
MDBOOK_VERSION=0.5.4
if ! command -v mdbook >/dev/null 2>&1; then
    log "cargo install --locked mdbook@$MDBOOK_VERSION"
    cargo install --locked mdbook --version "$MDBOOK_VERSION"
fi
mdbook build docs
scripts/check-doc-links.sh
log "ok: docs/book/index.html ($(mdbook --version))"
