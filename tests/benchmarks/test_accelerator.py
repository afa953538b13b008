"""benchmarks/accelerator.py cannot rot: `--smoke` runs every row at tiny sizes on the CPU."""

import os
import re
import subprocess
import sys

from tests import testing


def test_smoke_run_prints_every_row():
    done = subprocess.run(
        [sys.executable, os.path.join(testing.REPO_ROOT, "benchmarks", "accelerator.py"), "--smoke"],
        capture_output=True, text=True, env=testing.python_env(JAX_PLATFORMS="cpu"), timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Keras 3.15" in out and "(backend jax)" in out and "JAX devices: cpu" in out

    def value(row, implementation):
        match = re.search(rf"^{re.escape(row)}\s*\| {re.escape(implementation)}.*?\|\s*([0-9.]+) \|", out, re.M)
        assert match, f"no {row!r} row for {implementation!r} in:\n{out}"
        return float(match.group(1))

    assert value("(a) train step", "Keras 3 on JAX") > 0 and value("(a) inference", "Keras 3 on JAX") > 0
    assert value("(c) SDLLoss fwd+bwd", "ours, jax.jit") > 0
    assert value("(c) SDLLoss fwd+bwd", "official loop") > 0
    assert value("(d) evaluate_scores", "2,000 x 100") > 0
    try:
        import timm  # noqa: F401
        assert value("(b) train step, official loss loop", "PyTorch") > 0
    except ImportError:
        assert "timm is absent: not measured" in out


if __name__ == "__main__":
    testing.run(__file__)
