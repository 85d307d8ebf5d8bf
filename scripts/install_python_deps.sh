#!/usr/bin/env bash
# Installs farm_platform and the given extras into a virtualenv: with uv when the virtualenv
# has it (a fifth of pip's time here, the same packages), else with pip.
#   usage: install_python_deps.sh VENV PIP_ARGS...
set -euo pipefail
venv=$1
shift

install_with_uv() {
  [ -x "$venv/bin/uv" ] || return 1
  # uv reads none of pip's configuration: hand it the indexes and wheel folders pip would use.
  pip_setting() { "$venv/bin/pip" config get "global.$1" 2>/dev/null || true; }
  local args=(--python "$venv/bin/python" --quiet --native-tls)
  # pip takes the best version across every index; uv's default takes the first index that
  # has a package, which would miss a CPU-only torch in a wheel folder.
  args+=(--index-strategy unsafe-best-match)
  local index=${PIP_INDEX_URL:-$(pip_setting index-url)}
  [ -n "$index" ] && args+=(--index-url "$index")
  local url link
  for url in $(pip_setting extra-index-url) ${PIP_EXTRA_INDEX_URL:-}; do
    args+=(--extra-index-url "$url")
  done
  for link in $(pip_setting find-links) ${PIP_FIND_LINKS:-}; do
    args+=(--find-links "$link")
  done
  "$venv/bin/uv" pip install "${args[@]}" "$@"
}

if ! install_with_uv "$@"; then
  echo "installing with pip" >&2
  "$venv/bin/pip" install --quiet "$@"
fi
