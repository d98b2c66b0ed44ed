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
# with the Deploy SDK installed, `import monai` imports Holoscan, which links libcudart.so.13: pip's CUDA runtime is
# where the loader does not look (the app and the node load it themselves; the tests import monai in-process)
cuda_runtime=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/nvidia/cu13/lib
export LD_LIBRARY_PATH="$cuda_runtime${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ruff check .
python -m pytest -q tests "$@"
# the deploy app's container image (built once per set of inputs, some minutes the first time, then reused) and
# fresh virtual environments
python -m pytest -q -m container tests/test_container.py tests/test_no_cuda_toolkit.py
