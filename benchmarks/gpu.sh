#!/usr/bin/env bash
# The GPU benchmark in one command on a lent GPU machine (benchmarks/gpu.py; under 8 minutes on an H100):
#   bash benchmarks/gpu.sh [extra gpu.py arguments]
# That machine has PyTorch but not open_clip, diffusers or ftfy: carry them as wheels in .whl/ (ignored by git), made
# here once with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       open_clip_torch diffusers ftfy wcwidth
# and pass carry=[".whl"] to the device tool. With no .whl/ folder the packages must already be installed.
# On a CPU: bash benchmarks/gpu.sh --device cpu --tiny (what tests/test_gpu_benchmark.py runs).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-deps --no-index .whl/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$python" benchmarks/gpu.py "$@"
