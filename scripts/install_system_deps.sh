#!/usr/bin/env bash
# Installs what farm_platform needs outside Python, when it is missing:
# Java and the Google Cloud Pub/Sub emulator (local stack), PostgreSQL 15 server binaries (tests),
# Chromium (the UI check drives it headless through Playwright), Redis (the production
# topology's Celery broker), PgBouncer (the production topology's connection pooler).
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The production topology's Celery broker (`farm-platform stack up --production`).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The production topology's connection pooler: it starts its own (farm_platform_dev/pooler.py).
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
emulator_present() {
  [ -d /usr/lib/google-cloud-sdk/platform/pubsub-emulator ] ||
    { command -v gcloud >/dev/null 2>&1 &&
      [ -d "$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")/platform/pubsub-emulator" ]; }
}
emulator_present || missing+=(google-cloud-cli-pubsub-emulator)

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "missing system packages: ${missing[*]} (install them as root with apt-get)" >&2
  exit 1
fi
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
if ! $SUDO apt-get install -y -qq "${missing[@]}"; then
  cat >&2 <<'HELP'
Could not install every system package. The Pub/Sub emulator comes from Google's Cloud SDK
apt repository (https://cloud.google.com/sdk/docs/install#deb):
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
    | sudo tee /etc/apt/sources.list.d/google-cloud-sdk.list
  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg
  sudo apt-get update && sudo apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless
HELP
  exit 1
fi
# The Debian package's own PgBouncer would hold 127.0.0.1:6432 for nothing: stopped, and not
# started at boot.
if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now pgbouncer.service || true
  elif [ -x /etc/init.d/pgbouncer ]; then
    $SUDO /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
    $SUDO update-rc.d pgbouncer disable >/dev/null 2>&1 || true
  fi
fi
