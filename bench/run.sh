#!/usr/bin/env bash
# Runs jitrec's benchmarks with a release build and prints their figures. Not part of the tests:
# figures on a shared 2-core machine are noisy, so each is printed beside a reference measured
# in the same run. Needs SeaweedFS (`weed` on PATH) and, for `player-index`, PostgreSQL's server
# binaries (postgresql-15); scripts/test.sh installs both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
# The recorder benchmark runs the release `jitrec-recorder` program beside the bench binary.
cargo build --release --quiet -p jitrec-recorder -p jitrec-bench
exec target/release/jitrec-bench "${@:-uploader}"
