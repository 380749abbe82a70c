#!/usr/bin/env bash
# Run the openmm-torch (TorchForce) tests of openmm-e2former in a second, cached virtual environment.
#
# Why a second environment: the PyPI wheel openmmtorch==1.5 is built against torch 2.9 (its CUDA-12
# build: it needs libtorch_cuda and libnvrtc.so.12 even on the CPU platform), and fails on newer torch
# ("set_stride is not allowed on a Tensor created from .data").  The main environment uses a newer
# torch, so the TorchForce energy/force test runs here with torch==2.9.1 + openmm==8.6.1.
#
# The venv lives under ${E2F_TORCHFORCE_VENV:-~/.cache/openmm-e2former/venv-torchforce-<hash>} and is
# rebuilt only when the pinned requirement set below changes or the venv is broken.  Nothing of this
# repository is installed into it: the repo is put on PYTHONPATH (plus a tiny shim, see below), so a
# fresh clone at another path reuses the same venv.
#
# Usage:  bash .ci/torchforce_env.sh [extra pytest args]
# Exit code: pytest's (a missing openmmtorch is a failure here, never a skip: E2F_REQUIRE_OPENMMTORCH=1).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${E2F_TORCHFORCE_PYTHON:-python3}"
REQS=(
  "torch==2.9.1"
  "openmm==8.6.1"
  "openmmtorch==1.5"
  "numpy<2.4"
  "pyyaml"
  "pytest"
  "tqdm"
)
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
KEY="$(printf '%s\n' "$PYVER" "${REQS[@]}" | sha256sum | cut -c1-12)"
VENV="${E2F_TORCHFORCE_VENV:-$HOME/.cache/openmm-e2former/venv-torchforce-$KEY}"
STAMP="$VENV/.e2f-ok-$KEY"

check_venv() {
  # torch must be imported before openmm, or the openmmtorch plug-ins fail to load.
  "$VENV/bin/python" - <<'PYEOF'
import torch, openmm, openmmtorch, numpy, yaml, pytest
assert torch.__version__.startswith("2.9."), torch.__version__
names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
from importlib.metadata import version
print("torchforce venv: torch", torch.__version__, "openmm", openmm.__version__, "openmmtorch", version("openmmtorch"),
      "numpy", numpy.__version__, "platforms", names)
PYEOF
}

# one builder at a time (parallel CI jobs on one machine share the cache)
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

if [[ -f "$STAMP" ]] && check_venv; then
  echo "reusing $VENV"
else
  echo "building $VENV (torch 2.9.1 + openmm 8.6.1 + openmmtorch 1.5; several GB of CUDA wheels on the first build)"
  t0=$(date +%s)
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  # The machine-wide pip constraint file (if any) caps torch for the main env; it does not concern
  # this venv, so ignore it here; retries cover transient network hiccups.
  for attempt in 1 2 3; do
    if PIP_CONSTRAINT= "$VENV/bin/python" -m pip install --retries 5 --timeout 120 -q "${REQS[@]}"; then
      break
    fi
    if [[ $attempt == 3 ]]; then echo "pip install failed 3 times" >&2; exit 1; fi
    echo "pip install failed (attempt $attempt), retrying" >&2
    sleep 10
  done
  check_venv
  touch "$STAMP"
  echo "torchforce venv built in $(( $(date +%s) - t0 )) s"
fi

# Make the repository importable without installing it: openmm_e2former from the checkout, and the
# subpackages that setup.py maps from top-level folders (model/ -> openmm_e2former.model,
# kernels/ -> openmm_e2former.kernels) through a .pth-free shim directory.
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
cat > "$SHIM/sitecustomize.py" <<PYEOF
import importlib.util, sys
_REPO = ${REPO@Q}
_MAP = {"openmm_e2former.model": _REPO + "/model", "openmm_e2former.kernels": _REPO + "/kernels"}
class _Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        d = _MAP.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(name, d + "/__init__.py", submodule_search_locations=[d])
sys.meta_path.insert(0, _Finder)
PYEOF

cd "$REPO"
export PYTHONPATH="$SHIM:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export E2F_REQUIRE_OPENMMTORCH=1
rc=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_torchforce.py "$@" || rc=$?
exit $rc
