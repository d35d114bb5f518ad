#!/usr/bin/env bash
# Easel launcher: creates .venv on first run, installs Easel into it, then starts the UI.
#   ./webui.sh [webui options]      e.g. ./webui.sh --port 7861 --ckpt-dir ~/sd/models/Stable-diffusion
#   ./webui.sh --test [pytest args] installs the test extras and runs the whole test suite
# EASEL_TORCH chooses the torch requirement: unset = the default build for your platform (CUDA on Linux);
# EASEL_TORCH="torch==2.13.0" for a CPU build where one is available locally (CI does this).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${EASEL_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Easel needs Python 3.11 or newer" >&2; exit 1; }
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
stamp="$VENV/.easel-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install --quiet --upgrade pip
  if [ -n "${EASEL_TORCH:-}" ]; then "$PY" -m pip install --quiet "$EASEL_TORCH"; fi
  "$PY" -m pip install --quiet -e ".$extras"
  # upscaler architectures (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT...), needed at run time; --no-deps: its torchvision
  # requirement does not import beside every torch build, and Easel runs it without (pipelines/upscalers)
  "$PY" -m pip install --quiet --no-deps "spandrel==0.4.2"
  if [ -n "$extras" ]; then
    # test-only reference for the sampler formulas; --no-deps: its requirements pull torchvision, wandb, kornia
    "$PY" -m pip install --quiet --no-deps "k-diffusion==0.1.1.post1"
  fi
  touch "$stamp"
fi

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "${1:-}" = "--test" ]; then
  shift
  exec "$PY" -m pytest "$@"
fi
exec "$PY" -m webui "$@"
