#!/usr/bin/env bash
# The Windows side of jitrec's checks, run on Debian 12 (as root): cross-compiles the workspace for
# Windows x64 and runs its Windows unit tests under wine. scripts/test.sh calls it; run it alone with
#   bash scripts/windows.sh            # everything below
#   bash scripts/windows.sh setup      # only the one-time set-up (toolchain, FFmpeg, wine prefix)
#   bash scripts/windows.sh check      # set-up, then the builds, lints and tests (no smoke test)
#   bash scripts/windows.sh smoke      # only the smoke test, of the programs `check` built
#   bash scripts/windows.sh shell CMD  # CMD with the Windows toolchain's environment (e.g. cargo build)
#
# What it sets up, once (kept under $JITREC_WIN_PREFIX, /opt/jitrec-win by default):
# - rustup cannot fetch a Windows target here (only the package registries are reachable), so the
#   Windows std is built from source (-Zbuild-std) with Debian's own rustc-web and its library
#   sources, unpacked into a private prefix (nothing of the system's Rust is replaced);
# - the mingw-w64 cross compiler and linker, nasm, and wine to run the tests;
# - FFmpeg and x264 for Windows, static, from Debian's source packages (fetched with apt through a
#   private source list and checked against Debian's signed indexes), configured with only what the
#   recorder uses: the libx264 encoder, the H.264 decoder the tests read back with, swscale.
# - two stand-in DLLs wine 8 lacks (see below), for the tests under wine only.
#
# The smoke test needs a Linux jitrec-player: $JITREC_PLAYER (scripts/test.sh passes the one its
# test build made), else target/release/jitrec-player.
#
# What runs: the endpoint crates (format, spool, bucket, recorder, uploader) built for
# x86_64-pc-windows-gnu with clippy's lints as errors, in the same compilation as their tests
# (clippy-driver is the workspace's compiler wrapper, so the lints cost no second pass over the
# dependencies), and their tests executed by wine; `cargo check` for x86_64-pc-windows-msvc of the crates
# that build without MSVC's own C compiler and headers (format, spool); then a smoke test of the real
# jitrec-recorder.exe and jitrec-uploader.exe under wine. The player, the test harness and the
# benchmarks are not built for Windows: they run on Linux servers only and have no Windows code.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PREFIX=${JITREC_WIN_PREFIX:-/opt/jitrec-win}
RUSTWEB=$PREFIX/rust
FFMPEG=$PREFIX/ffmpeg
export WINEPREFIX=$PREFIX/wine
TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}/win
GNU=x86_64-pc-windows-gnu
MSVC=x86_64-pc-windows-msvc
# The crates checked for MSVC too (the others need MSVC's C toolchain; see below).
MSVC_CRATES="jitrec-format jitrec-spool"

. scripts/packages.sh
ensure_packages gcc-mingw-w64-x86-64-posix binutils-mingw-w64-x86-64 \
  nasm pkg-config clang libclang-dev wine64 wine xz-utils xvfb libzstd-dev xterm ffmpeg

# The set-up's three parts are independent: rustc-web (downloads and xz, one core at most) is
# unpacked and the wine prefix made in the background while FFmpeg and x264 compile.
setup_rustweb() {
# Debian's rustc-web (a second Rust compiler packaged for Firefox's build) comes with the standard
# library's sources, which -Zbuild-std compiles for the Windows target.
if [ ! -x "$RUSTWEB/bin/rustc" ]; then
  echo "==> unpacking Debian's rustc-web into $RUSTWEB"
  dl=$(mktemp -d)
  chmod 755 "$dl" # apt's download user must be able to write here
  std=$(apt-cache depends libstd-rust-web-dev | awk '/Depends: libstd-rust-web-[0-9]/ { print $2; exit }')
  llvm=$(apt-cache depends "$std" | awk '/Depends: libllvm[0-9]/ { print $2; exit }')
  (cd "$dl" && apt-get download -qq rustc-web libstd-rust-web-dev "$std" "$llvm" rust-web-src rust-web-clippy)
  tree=$RUSTWEB/tree
  rm -rf "$RUSTWEB"
  mkdir -p "$tree" "$RUSTWEB/bin"
  for deb in "$dl"/*.deb; do
    case "$deb" in
      # Only the library sources are needed (a sixth of the package).
      */rust-web-src_*) dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$tree" --wildcards --no-wildcards-match-slash './usr/src/rustc-*/library' './usr/lib/rustlib/src' ;;
      *) dpkg-deb -x "$deb" "$tree" ;;
    esac
  done
  rm -rf "$dl"
  # The compiler finds its LLVM through the private tree's library directory.
  for tool in rustc clippy-driver; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/usr/bin/%s "$@"\n' \
      "$tree" "$tree" "$tool" >"$RUSTWEB/bin/$tool"
    chmod +x "$RUSTWEB/bin/$tool"
  done
fi
}

setup_ffmpeg() {
# FFmpeg and x264 for Windows, static, so jitrec-recorder.exe needs no FFmpeg DLLs beside it.
if [ ! -f "$FFMPEG/lib/libavcodec.a" ]; then
  echo "==> building FFmpeg and x264 for Windows into $FFMPEG (once; the whole set-up measured about 5 minutes on 2 cores)"
  src=$(mktemp -d)
  chmod 755 "$src"
  mkdir -p "$src/lists/partial" "$src/cache/archives/partial"
  cat >"$src/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian-security bookworm-security main
EOF
  apt_src=(-o "Dir::Etc::SourceList=$src/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$src/lists" -o "Dir::Cache=$src/cache")
  apt-get -qq "${apt_src[@]}" update
  (cd "$src" && apt-get -qq "${apt_src[@]}" source --download-only ffmpeg x264)
  (cd "$src" && for t in ffmpeg_*.orig.tar.?z x264_*.orig.tar.?z; do tar -xf "$t"; done)
  jobs=$(nproc)
  stage=$FFMPEG.partial
  rm -rf "$stage"
  # The compilers' warnings go to a log, shown only if a step fails.
  quiet() { "$@" >>"$src/build.log" 2>&1 || { tail -n 60 "$src/build.log" >&2; return 1; }; }
  (
    cd "$src"/x264-*/
    ./configure --host=x86_64-w64-mingw32 --cross-prefix=x86_64-w64-mingw32- --prefix="$stage" \
      --enable-static --disable-cli --disable-opencl --disable-avs --disable-swscale --disable-lavf \
      --disable-ffms --disable-gpac --disable-lsmash --bit-depth=8 --chroma-format=420 >/dev/null
    quiet make -j"$jobs"
    quiet make install
  )
  (
    cd "$src"/ffmpeg-*/
    # --disable-autodetect: no hardware codecs, schannel or other Windows components that the
    # recorder does not use and that would each add a system library to link.
    PKG_CONFIG_PATH=$stage/lib/pkgconfig ./configure --prefix="$stage" --target-os=mingw32 \
      --arch=x86_64 --cross-prefix=x86_64-w64-mingw32- --pkg-config=pkg-config \
      --pkg-config-flags=--static --enable-static --disable-shared --enable-gpl --enable-libx264 \
      --disable-autodetect --disable-programs --disable-doc --disable-network --disable-everything \
      --enable-encoder=libx264 --enable-decoder=h264 --enable-parser=h264 --enable-demuxer=mov \
      --enable-muxer=mp4 --enable-protocol=file --enable-swscale --disable-avdevice \
      --disable-avfilter --disable-swresample --disable-postproc >/dev/null
    quiet make -j"$jobs"
    quiet make install
  )
  rm -rf "$src" "$FFMPEG"
  mv "$stage" "$FFMPEG"
fi
}

# Two DLLs wine 8 lacks, as stand-ins for the tests under wine only: Rust's std (1.78 and later)
# takes random bytes from ProcessPrng in bcryptprimitives.dll (forwarded here to RtlGenRandom),
# and windows-capture imports CreateDispatcherQueueController from coremessaging.dll (answered
# here with E_NOTIMPL: Graphics Capture cannot run under wine, so the recorder falls back to GDI).
setup_wine() {
if [ ! -f "$WINEPREFIX/drive_c/windows/system32/coremessaging.dll" ]; then
  echo "==> preparing the wine prefix $WINEPREFIX"
  stub=$(mktemp -d)
  cat >"$stub/prng.c" <<'EOF'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
    if (!SystemFunction036(data, part)) return FALSE;
    data += part;
    length -= part;
  }
  return TRUE;
}
EOF
  cat >"$stub/dispatcher.c" <<'EOF'
#include <windows.h>
__declspec(dllexport) HRESULT WINAPI CreateDispatcherQueueController(void *options, void **controller) {
  if (controller) *controller = NULL;
  return E_NOTIMPL;
}
EOF
  x86_64-w64-mingw32-gcc -O2 -shared -s -o "$stub/bcryptprimitives.dll" "$stub/prng.c" -ladvapi32
  x86_64-w64-mingw32-gcc -O2 -shared -s -o "$stub/coremessaging.dll" "$stub/dispatcher.c"
  WINEDEBUG=-all wineboot --init >/dev/null 2>&1 || true
  cp "$stub/bcryptprimitives.dll" "$stub/coremessaging.dll" "$WINEPREFIX/drive_c/windows/system32/"
  rm -rf "$stub"
fi
}

mode=${1:-all}
case "$mode" in
  all | setup | check | smoke | shell) ;;
  *) echo "usage: $0 [setup | check | smoke | shell CMD...]" >&2; exit 2 ;;
esac

mkdir -p "$PREFIX"
setup_log=$(mktemp)
(setup_rustweb && setup_wine) >"$setup_log" 2>&1 &
background=$!
setup_ffmpeg
wait $background || { cat "$setup_log" >&2; rm -f "$setup_log"; echo "error: the Windows toolchain set-up failed" >&2; exit 1; }
cat "$setup_log"
rm -f "$setup_log"
[ "$mode" = setup ] && exit 0

export RUSTC=$RUSTWEB/bin/rustc
export CLIPPY_DRIVER=$RUSTWEB/bin/clippy-driver
# -Zbuild-std is unstable; Debian's compiler is a release build, which this lets use it.
export RUSTC_BOOTSTRAP=1
export WINEDEBUG=-all
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
# ffmpeg-sys-next reads FFmpeg's headers and libraries from here (only the Windows target builds
# it in this environment: the target directory is separate from the Linux one).
export FFMPEG_DIR=$FFMPEG
# mingw's headers pull in clang's AMX intrinsics, whose packed-and-aligned tile type bindgen
# cannot express in Rust; FFmpeg's API does not use it, so the header is kept out.
export BINDGEN_EXTRA_CLANG_ARGS=-D__AMXINTRIN_H
build_std=(-Zbuild-std=std,panic_abort --target-dir "$TARGET_DIR" --locked)

if [ "$mode" = shell ]; then
  shift
  exec "$@"
fi

# The crates that run on a Windows endpoint. The player (a Linux server), the integration tests'
# harness and the benchmarks (Xvfb, PostgreSQL, SeaweedFS and Chromium on Linux) are left out.
endpoint=(-p jitrec-format -p jitrec-spool -p jitrec-bucket -p jitrec-recorder -p jitrec-uploader)
# clippy-driver is rustc with clippy's lints: as the workspace's compiler wrapper it lints our
# crates in the same compilation that builds them and their tests, with no separate check pass
# over the dependencies (cargo-clippy would also run rustup's clippy-driver, built against another
# compiler than the one building the Windows std). CLIPPY_ARGS separates its arguments with
# __CLIPPY_HACKERY__. Every cargo command below keeps this environment, so none rebuilds what
# another built.
export RUSTC_WORKSPACE_WRAPPER=$CLIPPY_DRIVER CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# wine's GDI draws on an X display: a private Xvfb lets the GDI capture test and the smoke test
# read real pixels.
display=:$((90 + RANDOM % 400))
Xvfb "$display" -screen 0 1024x768x24 -nolisten tcp >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.1; done

if [ "$mode" != smoke ]; then
echo "==> cargo check ($MSVC: $MSVC_CRATES)"
# MSVC's compiler and headers are not on Debian, so C cannot be built for this target: zstd-sys is
# pointed at a system zstd through pkg-config instead (`check` links nothing), and the crates
# whose C has no such way out (FFmpeg's bindings, ring) are checked for the GNU target only.
ZSTD_SYS_USE_PKG_CONFIG=1 PKG_CONFIG_ALLOW_CROSS=1 RUSTC_WORKSPACE_WRAPPER= \
  cargo check "${build_std[@]}" --target $MSVC $(printf -- '-p %s ' $MSVC_CRATES)

echo "==> cargo test ($GNU, under wine; clippy -D warnings in the same build)"
# Doc tests run in the Linux suite (rustdoc here would be rustup's, not the one of this std).
DISPLAY=$display cargo test "${build_std[@]}" --target $GNU "${endpoint[@]}" --lib --bins --tests
fi
[ "$mode" = check ] && exit 0

echo "==> smoke test: the Windows programs under wine"
# The real jitrec-recorder.exe and jitrec-uploader.exe on the Xvfb display above: JIT started and
# stopped over the control pipe while a red window is on screen, the spool shipped to a local
# bucket, and the Linux player verifying and exporting the session, whose last frame must show
# the window. Graphics Capture cannot run under wine, so this is the GDI path.
exe=$TARGET_DIR/$GNU/debug
# The programs as the test build made them where it did (an integration test makes cargo build
# its package's program: the recorder's does); a program it did not make is built now.
if [ ! -x "$exe/jitrec-recorder.exe" ] || [ ! -x "$exe/jitrec-uploader.exe" ]; then
  cargo build "${build_std[@]}" --target $GNU -p jitrec-recorder -p jitrec-uploader
fi
smoke=$(mktemp -d)
trap 'pkill -f "$smoke" 2>/dev/null || true; wineserver -k 2>/dev/null || true; kill $xvfb 2>/dev/null || true; rm -rf "$smoke"' EXIT
wpath() { echo "Z:${1//\//\\}"; }
printf "spool = '%s'\n" "$(wpath "$smoke/spool")" >"$smoke/recorder.toml"
wait_for() { # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local limit=$1 what=$2
  shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 9>&- && return 0; sleep 0.1; done
  echo "smoke test: $what did not happen within $limit s" >&2
  cat "$smoke"/*.log >&2 2>/dev/null || true
  return 1
}
export DISPLAY=$display
# The agent stops when its stdin closes: its stdin is a FIFO whose only writer is fd 9 of this
# shell (every command started while it is open gets `9>&-`, so closing it here is the EOF).
mkfifo "$smoke/stdin"
wine "$exe/jitrec-recorder.exe" run --config "$(wpath "$smoke/recorder.toml")" <"$smoke/stdin" \
  >"$smoke/recorder.log" 2>&1 &
agent=$!
exec 9>"$smoke/stdin"
wait_for 60 "the control pipe answering" wine "$exe/jitrec-recorder.exe" jit status
xterm -bg red -geometry 40x10+0+0 -e sleep 120 9>&- &
window=$!
wine "$exe/jitrec-recorder.exe" jit start --user 'WS\smoke' --authorized-by ci --reason smoke 9>&-
chunks() { [ "$(find "$smoke/spool/sessions" -name 'chunk-*' | wc -l)" -ge 2 ]; }
wait_for 60 "two chunks in the spool" chunks
wine "$exe/jitrec-recorder.exe" jit stop 9>&-
kill $window
exec 9>&-
agent_gone() { ! kill -0 $agent; }
wait_for 60 "the agent exiting once its stdin closed" agent_gone
wait $agent
wine "$exe/jitrec-uploader.exe" run --spool "$(wpath "$smoke/spool")" \
  --local-dir "$(wpath "$smoke/bucket")" >"$smoke/uploader.log" 2>&1 &
uploader=$!
drained() { [ -z "$(ls -A "$smoke/spool/sessions")" ]; }
wait_for 120 "the spool drained into the bucket" drained
kill $uploader
player=${JITREC_PLAYER:-$root/target/release/jitrec-player}
# The Windows recorder signed the session with the key it created (format v2, under its
# machine's prefix): the player indexes it, the key is approved as an administrator would
# (after comparing fingerprints), and only then does it verify as verified (exit 0).
index="$smoke/index.sqlite3"
"$player" reindex --bucket-dir "$smoke/bucket" --index "$index"
key=$("$player" machines list --index "$index" | head -1)
machine=$(cut -f1 <<<"$key")
fingerprint=$(cut -f4 <<<"$key")
"$player" machines approve "$machine" "$fingerprint" --reason "smoke test" --index "$index"
"$player" verify --bucket-dir "$smoke/bucket" --record "$index"
session=$(ls "$smoke/bucket/v2/machines/$machine/sessions")
"$player" export --bucket-dir "$smoke/bucket" --index "$index" -o "$smoke/session.mp4" "$session"
pixel() { # pixel X Y: the last frame's colour at (X, Y), as hex RGB
  ffmpeg -v error -i "$smoke/session.mp4" -vf "crop=2:2:$1:$2" -f rawvideo -pix_fmt rgb24 - |
    tail -c 3 | od -An -tx1 | tr -d ' \n'
}
inside=$(pixel 40 40)
outside=$(pixel 900 700)
echo "smoke test: window pixel $inside, background pixel $outside"
red() { local r=$((16#${1:0:2})) g=$((16#${1:2:2})) b=$((16#${1:4:2})); [ $r -gt 200 ] && [ $g -lt 60 ] && [ $b -lt 60 ]; }
dark() { local r=$((16#${1:0:2})) g=$((16#${1:2:2})) b=$((16#${1:4:2})); [ $r -lt 40 ] && [ $g -lt 40 ] && [ $b -lt 40 ]; }
red "$inside" || { echo "smoke test: the red window is not in the recording" >&2; exit 1; }
dark "$outside" || { echo "smoke test: the background is not black" >&2; exit 1; }
echo "smoke test: passed"
