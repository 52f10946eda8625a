# Sourced by test.sh and demo.sh: installs the Debian packages given that are missing
# (apt-get update first, only when something is missing).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [[ " ${missing[*]} " == *" postgresql-15 "* ]]; then
    # The tests start their own cluster; stop the package from creating and starting one (as
    # PostgreSQL's own container images do).
    apt-get install -y -qq --no-install-recommends postgresql-common
    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
