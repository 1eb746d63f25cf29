#!/bin/sh
# Run the agent's pipeline and inference tests against tflite-runtime 2.14 (docs/agent.md "Runtimes").
#
# tflite-runtime stopped at 2.14 and is built against numpy 1.x, so it gets a venv of its own
# (.venv-tflite) with numpy<2; ai-edge-litert is NOT installed there, so the agent's runtime probe
# (edge_agent.inference.load_runtime) must pick tflite-runtime. EDGESEAL_TFLITE_RUNTIME pins it too.
#
# Usage: sh tools/test-tflite-runtime.sh [extra pytest args]
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${TFLITE_VENV:-.venv-tflite}"
BIN="$VENV/bin"

if [ ! -x "$BIN/python" ] || [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    test -x "$BIN/python" || "$PYTHON" -m venv "$VENV"
    constraints="$VENV/constraints.txt"
    printf 'numpy<2\n' > "$constraints"
    "$BIN/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" \
        "numpy<2" "tflite-runtime==2.14.*"
    # The project without its [agent] extra (no ai-edge-litert), plus the test tools.
    "$BIN/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e . \
        "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
    touch "$VENV/.installed"
fi

"$BIN/python" - <<'PY'
import importlib.util, sys
import numpy
assert numpy.__version__.startswith("1."), numpy.__version__
assert importlib.util.find_spec("ai_edge_litert") is None, "ai-edge-litert must not be in the tflite venv"
from edge_agent.inference import load_runtime
rt = load_runtime()
print(f"runtime: {rt.name} {rt.version}, numpy {numpy.__version__}, python {sys.version.split()[0]}")
assert rt.name == "tflite-runtime"
PY

EDGESEAL_TFLITE_RUNTIME=tflite-runtime exec "$BIN/python" -m pytest -q -p no:cacheprovider \
    tests/edge_agent/test_inference.py tests/edge_agent/test_pipeline.py tests/edge_agent/test_pty_model.py "$@"
