#!/usr/bin/env bash
# After both 2D trainings end: the test suite on a clean clone of main's HEAD, then the 2D records on the new models.
set -u
for pid in "$@"; do while kill -0 $pid 2>/dev/null; do sleep 15; done; done
echo "training done $(date)" >> /work/runs/after.log
rm -rf /work/runs/suite_clone && git clone -q /work/main /work/runs/suite_clone && cd /work/runs/suite_clone
echo "suite at $(git log --oneline | head -1)" >> /work/runs/after.log
ln -s /work/main/.venv .venv && ln -s /work/main/bundle/data bundle/data && . .venv/bin/activate
python -m pytest -q tests > /work/runs/suite.log 2>&1; echo "suite rc $? $(date)" >> /work/runs/after.log
python -m pytest -q -m container tests/test_container.py > /work/runs/suite_container.log 2>&1; echo "container rc $? $(date)" >> /work/runs/after.log
THREADS=2 bash /work/runs/records_2d.sh sampling
THREADS=1 bash /work/runs/records_2d.sh generalisation & THREADS=1 bash /work/runs/records_2d.sh interplane & wait
THREADS=1 bash /work/runs/records_2d.sh guidance & THREADS=1 bash /work/runs/records_2d.sh denoising & wait
echo "records done $(date)" >> /work/runs/after.log
