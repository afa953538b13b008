#!/usr/bin/env bash
# The main job: set up the virtualenv, then make the synthetic demo data, train, and
# evaluate zero-shot, printing the results table. Each step is a plain CLI with its
# flagfile in configs/; run them yourself to change anything.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/venv.sh
PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
"$PY" -m pipelines.demo --flagfile=configs/demo_data.flags
"$PY" -m sdl_keras.train --flagfile=configs/demo.flags
"$PY" -m sdl_keras.evaluate --flagfile=configs/demo_eval.flags
