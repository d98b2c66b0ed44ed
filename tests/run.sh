#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine (Orthanc and dcmtk for the PACS tests, the Python
# environment in .venv) and runs them. Run from anywhere: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s orthanc dcmtk > /dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends orthanc dcmtk > /dev/null
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements.txt
# with the Deploy SDK installed, `import monai` imports Holoscan, which links libcudart.so.13, and pip's CUDA runtime
# is where the loader does not look: a start-up hook in the venv loads it into every Python process of the venv
python deploy_app/motfm_deploy/cuda.py
ruff check .
python -m pytest -q tests "$@"
# the deploy app's container image (built once per set of inputs, some minutes the first time, then reused) and
# fresh virtual environments
python -m pytest -q -m container tests/test_container.py tests/test_no_cuda_toolkit.py
