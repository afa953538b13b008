#!/usr/bin/env bash
# Creates (or refreshes) the project virtualenv .venv from a requirements file
# (default requirements.txt; tools/test.sh passes requirements-dev.txt), installs the
# project into it (editable), and names it as Bazel's interpreter in .bazelrc.venv.
# Re-running is cheap: packages are reinstalled only when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c "import ensurepip" >/dev/null 2>&1; then
  echo "Installing python3-venv (Debian/Ubuntu) ..."
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
requirements=${1:-requirements.txt}
stamp=.venv/.requirements.sha256
wanted=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)-$requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$requirements"
  # The project itself, editable: `import sdl_keras` and the console scripts (sdl_train, ...)
  # work from any folder.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$wanted" > "$stamp"
fi
# Bazel's interpreter, for build, test and run alike (.bazelrc try-imports this file).
echo "build --python_path=$PWD/.venv/bin/python" > .bazelrc.venv
