#!/usr/bin/env bash
# CI: fleetproxy against a real vLLM (issue 7). Installs vLLM's CPU build with the shared
# script (idempotent: ~90 s the first time, seconds after), then runs tests/realvllm with
# CI=true, so a missing install or a vLLM that does not start fails instead of skipping.
# The suite starts its own vLLM servers (ports 18600-18699) and stops them by PID file.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 CI=true FLEETPROXY_REALVLLM=1
# The suite runs on the project venv `make install` keeps (.venv); PY, if set, is only the
# Python that venv is made from, as in the Makefile.
VPY=.venv/bin/python
SHARED="${FLEETPROXY_REALVLLM_DIR:-$(cd .. && pwd)/shared/realvllm}"
export FLEETPROXY_REALVLLM_DIR="$SHARED"
start=$(date +%s)

echo "== real vLLM: install ($SHARED/install.sh)"
bash "$SHARED/install.sh"
installed=$(date +%s)

# The suite runs fleetproxy from this tree. Always install: it takes seconds when nothing changed,
# and an import check would pass a venv that lacks a newly added test extra.
make install ${PY:+PY="$PY"}

echo "== real vLLM: conformance suite (tests/realvllm)"
"$VPY" -m pytest -q -rs -m realvllm tests/realvllm --timeout 600 -p no:cacheprovider
done_=$(date +%s)
echo "== real vLLM done in $(( done_ - start )) s (install $(( installed - start )) s, suite $(( done_ - installed )) s)"
