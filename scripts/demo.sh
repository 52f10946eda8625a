#!/usr/bin/env bash
# jitrec's demo: the whole pipeline on one machine with embedded defaults. Installs what it needs
# (Debian 12, as root), builds, starts a virtual display (Xvfb) with a short scripted admin session,
# the recorder (JIT switched on and off over its control socket), the uploader into a local
# directory store and the player with SQLite, then prints the report view's address and a
# sign-in. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DIR=${JITREC_DEMO_DIR:-/tmp/jitrec-demo}
DISPLAY_NUM=${JITREC_DEMO_DISPLAY:-:77}
LISTEN=${JITREC_DEMO_LISTEN:-127.0.0.1:8480}

# System packages: the build's (FFmpeg libraries, clang for bindgen), the X server, and xterm
# for the scripted session.
PACKAGES=(gcc libc6-dev pkg-config clang libclang-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev xvfb xterm)
. scripts/packages.sh
ensure_packages "${PACKAGES[@]}"
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust with rustup" >&2; exit 1; }

echo "==> building (release)"
cargo build --release --quiet -p jitrec-recorder -p jitrec-uploader -p jitrec-player
bin="$root/target/release"

rm -rf "$DIR"
mkdir -p "$DIR"/{spool,bucket,logs}
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  # Newest first: player, uploader, recorder, X server.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "recordings stay in $DIR/bucket; the index in $DIR/index.sqlite3"
}
trap stop INT TERM EXIT

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "error: $what did not come up; logs in $DIR/logs" >&2
  exit 1
}

echo "==> virtual display $DISPLAY_NUM"
Xvfb "$DISPLAY_NUM" -screen 0 1280x800x24 -nolisten tcp >"$DIR/logs/xvfb.log" 2>&1 &
pids+=($!)
wait_for "Xvfb" test -e "/tmp/.X11-unix/X${DISPLAY_NUM#:}"

cat >"$DIR/recorder.toml" <<EOF
spool = "$DIR/spool"

[labels]
company = "demo-company"
location = "demo-location"
computer = "$(hostname)"

[control]
socket = "$DIR/recorder.sock"

[capture]
display = "$DISPLAY_NUM"
fps = 5
EOF

echo "==> recorder, uploader, player"
"$bin/jitrec-recorder" run --config "$DIR/recorder.toml" >"$DIR/logs/recorder.log" 2>&1 &
pids+=($!)
wait_for "the recorder's control socket" test -S "$DIR/recorder.sock"
"$bin/jitrec-uploader" run --spool "$DIR/spool" --local-dir "$DIR/bucket" >"$DIR/logs/uploader.log" 2>&1 &
pids+=($!)
password="demo-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$password" | "$bin/jitrec-player" user add reviewer --role admin --index "$DIR/index.sqlite3" >/dev/null
"$bin/jitrec-player" serve --bucket-dir "$DIR/bucket" --index "$DIR/index.sqlite3" \
  --listen "$LISTEN" --retention-every 0 >"$DIR/logs/player.log" 2>&1 &
pids+=($!)
wait_for "the player" bash -c "exec 3<>/dev/tcp/${LISTEN%:*}/${LISTEN#*:}"

echo "==> a scripted admin session under JIT (about 20 s)"
"$bin/jitrec-recorder" jit start --socket "$DIR/recorder.sock" --user demo-admin \
  --authorized-by "helpdesk@example.com" --reason "DEMO-1 printer driver"
export DISPLAY=$DISPLAY_NUM
xterm -geometry 100x30+20+20 -fa Monospace -fs 11 -T "root@demo: ~" -e bash -c '
  printf "\033]0;root@demo: install a driver\007"
  for c in "id" "uname -a" "ls -la /etc/cups" "cat /etc/os-release" "useradd -m demo-temp-user" "userdel -r demo-temp-user"; do
    printf "\$ %s\n" "$c"; sleep 1; bash -c "$c" 2>&1 | head -20; sleep 1.5
  done
  printf "\033]0;root@demo: done\007"; sleep 2' &
term=$!
sleep 4
xterm -geometry 90x24+560+380 -fa Monospace -fs 10 -T "top" -e timeout 10 top -d 1 &
wait "$term" 2>/dev/null || true
sleep 1
"$bin/jitrec-recorder" jit stop --socket "$DIR/recorder.sock"

wait_for "the session in the index" bash -c \
  "'$bin/jitrec-player' status --index '$DIR/index.sqlite3' | grep -q 'complete *1'"

cat <<EOF

  jitrec demo is running.
    report view:  http://$LISTEN/
    sign in as:   reviewer / $password
  The recorded session is listed as complete; search for "useradd" to jump to the command.
  Ctrl-C stops everything.

EOF
wait "${pids[@]}"
