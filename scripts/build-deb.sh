#!/usr/bin/env bash
# Builds the Debian package: the release binary, then the man pages and shell
# completions generated from the clap definitions (`walrcv generate-assets`,
# gzipped as Debian wants man pages), then `cargo deb --no-build`
# ([package.metadata.deb] in Cargo.toml). Installs cargo-deb if missing.
# The binary is stripped (the release profile keeps line tables for
# backtraces; the package does not need them). Prints the path of the .deb
# last. Respects CARGO_TARGET_DIR.
#
#   scripts/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: cargo install cargo-deb" >&2
    cargo install --locked cargo-deb
fi
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin walrcv
assets="$target_dir/release/assets"
rm -rf "$assets"
"$target_dir/release/walrcv" generate-assets "$assets" >/dev/null
gzip -9n "$assets"/man/*.1
rm -f "$target_dir"/debian/walrcv_*.deb
cargo deb --no-build --locked --strip --output "$target_dir/debian/" >&2
ls "$target_dir"/debian/walrcv_*.deb
