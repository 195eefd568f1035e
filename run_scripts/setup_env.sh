#!/usr/bin/env bash
# Creates the project's environments from scratch:
#   .venv      Python >= 3.12 with flax-distil installed editable, plus EXTRAS (default test,demo)
#   .venv-ref  Python 3.11 with CPU PyTorch + transformers: the PyTorch reference the parity
#              tests and benchmarks compare against (skip with --no-reference)
# Usage: bash run_scripts/setup_env.sh [--extras test,demo] [--no-reference]
set -euo pipefail
cd "$(dirname "$0")/.."

extras="test,demo"
reference=1
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) extras="$2"; shift 2 ;;
    --no-reference) reference=0; shift ;;
    *) echo "setup_env.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# pip, minus this machine's notes about absent local mirror entries.
pip_install() {
  "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
}

# Prints the first interpreter whose version is >= $1.$2 (and < $1.$3 when given).
find_python() {
  local major=$1 minor=$2 below=${3:-99} candidate
  local candidates=("python$major.$minor" python3.14 python3.13 python3.12 python3.11 python3)
  if command -v pyenv >/dev/null 2>&1; then
    local root; root=$(pyenv root)
    candidates=("$root"/versions/"$major.$minor".*/bin/python"$major.$minor" "${candidates[@]}")
    candidates+=("$root"/versions/3.1[2-9]*/bin/python3)
  fi
  for candidate in "${candidates[@]}"; do
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if "$candidate" -c "import sys; v=sys.version_info; \
        sys.exit(not (v[:2] >= ($major, $minor) and v[1] < $below))" 2>/dev/null; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 1
}

python=$(find_python 3 12) || {
  echo "error: flax-distil needs Python >= 3.12 (jax >= 0.12 requires it) and none was found;" \
       "install one (e.g. 'pyenv install 3.12') and rerun" >&2
  exit 1
}
echo "== .venv with $python ($("$python" --version))"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_install .venv/bin/python -m pip install -q --upgrade pip
pip_install .venv/bin/python -m pip install -q -e ".[$extras]"

if [ "$reference" = 1 ]; then
  ref_python=$(find_python 3 11 12) || {
    echo "error: the PyTorch reference environment needs Python 3.11 (CPU torch wheel);" \
         "install it or pass --no-reference" >&2
    exit 1
  }
  echo "== .venv-ref with $ref_python ($("$ref_python" --version))"
  [ -x .venv-ref/bin/python ] || "$ref_python" -m venv .venv-ref
  pip_install .venv-ref/bin/python -m pip install -q --upgrade pip
  pip_install .venv-ref/bin/python -m pip install -q "torch==2.13.*" "transformers>=5.20,<6" \
    safetensors numpy
fi
echo "== ready: .venv/bin/flax-distil --help"
