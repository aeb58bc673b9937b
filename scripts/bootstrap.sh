#!/usr/bin/env bash
# Make a fresh machine ready: system packages the sandbox uses (when we may
# install them), then .venv with rlm-ray and its dev extras. Idempotent and
# quick when nothing changed (a stamp keyed on pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt=()
command -v bwrap >/dev/null 2>&1 || want_apt+=(bubblewrap)
[ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || ls /usr/lib/*/libseccomp.so.2 >/dev/null 2>&1 || want_apt+=(libseccomp2)
if [ "${#want_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${want_apt[*]} (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want_apt[@]}" >/dev/null 2>&1 \
      || echo "bootstrap: could not install ${want_apt[*]}; the sandbox will run with fewer layers"
  else
    echo "bootstrap: missing ${want_apt[*]} and cannot apt-get here; the sandbox will run with fewer layers"
  fi
fi

PY="${PYTHON:-python3}"
stamp=".venv/.rlm-ray-installed"
key="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "bootstrap: installing rlm-ray[dev] into .venv"
  log=.venv/pip-install.log
  # pip's full output goes to a log; it is shown only when the install fails.
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 40 "$log"; echo "bootstrap: pip install failed (full log: $log)"; exit 1
  fi
  echo "$key" > "$stamp"
fi
