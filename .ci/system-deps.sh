#!/usr/bin/env bash
# Install what the tests need beyond Python packages, where missing: PostgreSQL server binaries, Java 17 and
# Chromium.
set -euo pipefail
need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if ! command -v java >/dev/null 2>&1; then
  need+=(openjdk-17-jre-headless)
fi
if ! command -v chromium >/dev/null 2>&1; then  # the browser tests of the HTML reports (Playwright drives it)
  need+=(chromium)
fi
if ((${#need[@]})); then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The postgresql package starts a cluster of its own; the tests start throwaway ones and do not need it.
if id postgres >/dev/null 2>&1; then :; elif [ "$(id -u)" -eq 0 ]; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi
