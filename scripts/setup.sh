#!/usr/bin/env bash
# Installs what ManiReports Offload needs on a fresh Debian/Ubuntu machine (no Docker needed):
# Java + Maven (to fetch and run Apache Kafka's own jars), PostgreSQL, fonts for certificates,
# and a Python virtualenv with the project and its test tools. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openjdk-17-jre-headless maven postgresql fonts-dejavu-core fonts-wqy-microhei fonts-droid-fallback
              php-cli chromium curl)  # php-cli: the Moodle client's test; chromium: the monitoring page's test;
# curl: what a relay pipes its bounces through to the API (tests/integration/test_postfix_bounces.py)
# Node.js runs the non-Python consumer (clients/node-consumer) in the tests; any node >= 18.3 with npm will do.
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
# podman (with runc) and debootstrap: .ci/image-smoke builds the Docker image and runs the service from it.
APT_PACKAGES+=(podman runc debootstrap)
# Postfix, with Cyrus SASL's tools: the real relay of tests/integration/test_postfix_relay.py. Installed with no
# system configuration, so it runs nothing by itself (each test starts an instance of its own); not where another
# mail server already provides /usr/sbin/sendmail, which installing Postfix would replace.
if dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q "install ok installed" || [ ! -e /usr/sbin/sendmail ]; then
  APT_PACKAGES+=(postfix sasl2-bin libsasl2-modules)
fi
# Exim, the relay Debian installs by default: the binary of Debian's exim4-daemon-light, unpacked below (installing
# the package would replace Postfix), with the libraries it links (tests/integration/test_exim_relay.py).
EXIM_LIBRARIES=(libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0 libcrypt1)
[ -x /usr/sbin/exim4 ] || APT_PACKAGES+=("${EXIM_LIBRARIES[@]}")
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's package creates and starts its own cluster; the project runs its own on another port instead.

# Where no Exim is installed, its binary goes to /usr/local/lib/offload-tests (outside the checkout: Exim's daemons
# run as its own user, Debian-exim, and exec the binary again). Each test runs an instance with a config of its own.
EXIM=/usr/local/lib/offload-tests/exim4
if [ ! -x /usr/sbin/exim4 ] && [ ! -x "$EXIM" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  unpack=$(mktemp -d)
  echo "setup: fetching Debian's exim4-daemon-light for the relay tests"
  (cd "$unpack" && { apt-get download -qq exim4-daemon-light 2>/dev/null \
                     || { $SUDO apt-get update -qq && apt-get download -qq exim4-daemon-light; }; })
  dpkg-deb -x "$unpack"/exim4-daemon-light_*.deb "$unpack/root"
  $SUDO install -D -m 0755 "$unpack/root/usr/sbin/exim4" "$EXIM"
  rm -rf "$unpack"
fi
if [ ! -x /usr/sbin/exim4 ] && ! getent passwd Debian-exim >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The Node consumer's dependencies, exactly as pinned in its package-lock.json.
NODE_CLIENT=clients/node-consumer
if [ ! -d "$NODE_CLIENT/node_modules" ] || [ "$NODE_CLIENT/package-lock.json" -nt "$NODE_CLIENT/node_modules" ]; then
  (cd "$NODE_CLIENT" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: done (activate with: . .venv/bin/activate)"
