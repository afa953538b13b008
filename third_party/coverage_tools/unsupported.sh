#!/bin/sh
echo "bazel coverage is not set up for sdl-keras; use 'bazel test'." >&2
exit 1
