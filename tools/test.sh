#!/usr/bin/env bash
# Installs what the tests need (Bazel from Debian's bazel-bootstrap, the virtualenv) and
# runs `bazel test //...` with the virtualenv's interpreter. Extra arguments go to Bazel.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v bazel >/dev/null 2>&1 || [ ! -d /usr/share/bazel/rules/java ]; then
  echo "Installing Bazel (Debian's bazel-bootstrap and bazel-rules-java) ..."
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bazel-bootstrap bazel-rules-java
fi
tools/venv.sh requirements-dev.txt
# The tests run under the project's interpreter, deliberately: .bazelrc.venv (written by
# tools/venv.sh) sets --python_path with Python toolchains off, for `bazel run` as well.
set +e
bazel test //... "$@" 2>&1 | tee .bazel-test.log
status=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^//.* PASSED in' .bazel-test.log || true)
failed=$(grep -cE '^//.* (FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD)' .bazel-test.log || true)
echo "bazel: ${passed} passed, ${failed} failed"
exit "$status"
