#!/usr/bin/env bash
# Bounded fuzzing of every parser that reads bytes the player does not control (issue 17): the
# cargo-fuzz targets in fuzz/ (document, events, range, bundle), each run for FUZZ_SECONDS
# (default 60) from its committed seeds. Exits non-zero if any target finds a crash, a hang or
# an out-of-memory; prints one line per target. scripts/test.sh runs it; run it alone as
#   bash scripts/fuzz.sh [TARGET...]        FUZZ_SECONDS=600 bash scripts/fuzz.sh events
#
# cargo-fuzz drives rustc with nightly-only flags (-Z sanitizer, sanitizer coverage); CI has only
# the stable toolchain, so RUSTC_BOOTSTRAP=1 lets stable accept them. The stable toolchain ships
# AddressSanitizer's runtime for x86_64 Linux, so the targets keep cargo-fuzz's default (ASan, a
# release build with debug assertions and overflow checks): it is what catches a fault inside
# zstd's C code, the one non-Rust parser here.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(document events range bundle)
# The version this script was measured with; --locked builds it with its own tested lock file.
CARGO_FUZZ_VERSION=0.13.2

export RUSTC_BOOTSTRAP=1
# ASan keeps 256 MB of freed memory in quarantine by default, which alone put a legitimate 64 MiB
# events payload (838,860 events from 5.7 KB of zstd) at 487 MB of the 512 MB limit below; with
# 16 MB it peaks under 300 MB, and use-after-free is still caught within that window.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=16}"
# Beside the workspace's build, in its own directory: the instrumented build shares nothing with
# it (other flags), and must not take the workspace build's lock.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# libfuzzer-sys compiles libFuzzer (C++) with `c++`; the suite's packages bring clang (with
# libstdc++'s headers) but not g++.
command -v c++ >/dev/null || export CXX=${CXX:-clang++}

# Not a workspace member, so the workspace's `cargo fmt --all` does not see it.
echo "==> cargo fmt --check (fuzz/)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "==> cargo fuzz build (all targets)"
cargo fuzz build

# Inputs larger than this are not tried: a document is at most 64 KiB, but real ones are under
# 4 KiB and mutations of small inputs are what find bugs within a minute; the bundle seed (a
# whole verified bundle, mostly tar padding) is 21 KB.
max_len() {
  case "$1" in
    range) echo 256 ;;
    bundle) echo 65536 ;;
    *) echo 16384 ;;
  esac
}

results=()
failed=0
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "error: no fuzz target $t (fuzz/corpus/$t)" >&2; exit 2; }
  # A copy, so what a run adds to the corpus never lands in the work tree.
  corpus=$(mktemp -d)
  cp fuzz/corpus/"$t"/seed-* "$corpus"/
  seeds=$(ls "$corpus" | wc -l)
  log=$(mktemp)
  echo "==> fuzz $t for ${seconds}s"
  # -rss_limit_mb: a decompression bomb or an unbounded allocation is a finding, not a slow run.
  # -timeout: one input taking 30 s is a hang (the slowest legitimate input known, a 64 MiB
  # events payload, takes 8 s instrumented; 0.6 s in a plain release build).
  rc=0
  cargo fuzz run "$t" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=512 \
    -max_len="$(max_len "$t")" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if [ "$rc" = 0 ] && [ -n "$runs" ]; then
    s=${secs:-1}
    [ "$s" -gt 0 ] || s=1
    rate=$((runs / s))
    results+=("fuzz $t: ok, $runs runs in ${secs}s ($rate exec/s), corpus $seeds -> $(ls "$corpus" | wc -l) inputs")
  else
    failed=1
    tail -60 "$log"
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    results+=("fuzz $t: FAILED (exit $rc) after ${runs:-?} runs; reproducer: ${artifact:-none written}; replay: RUSTC_BOOTSTRAP=1 cargo fuzz run $t ${artifact:-<file>}")
  fi
  rm -rf "$corpus" "$log"
done

echo "==> fuzz results (${seconds}s each)"
printf '    %s\n' "${results[@]}"
exit "$failed"
