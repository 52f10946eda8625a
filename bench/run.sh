#!/usr/bin/env bash
# Runs jitrec's benchmarks with a release build and prints their figures. Not part of the tests:
# figures on a shared 2-core machine are noisy, so each is printed beside a reference measured
# in the same run. `bash bench/run.sh all` runs every benchmark and ends with one table
# (`all --quick` in about 10 minutes); `bash bench/run.sh --help` lists the single ones.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the benchmarks drive (Debian 12, as root): the build's packages, Xvfb, the ffmpeg CLI
# (the reference recorder and the SSIM filter), xterm, tmux, less and vim-tiny for the scripted
# admin workload, PostgreSQL's server for the index benchmark, pip for SeaweedFS.
PACKAGES=(gcc libc6-dev pkg-config clang libclang-dev libx264-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev ffmpeg xvfb xterm
  fonts-dejavu-core tmux less vim-tiny perl python3-pip postgresql-15)
. scripts/packages.sh
ensure_packages "${PACKAGES[@]}"
ensure_seaweedfs

# The recorder and pipeline benchmarks run the release programs beside the bench binary.
cargo build --release --quiet -p jitrec-recorder -p jitrec-uploader -p jitrec-player -p jitrec-bench
exec target/release/jitrec-bench "${@:-all}"
