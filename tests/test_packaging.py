"""The project installs as a package: a wheel built from pyproject.toml, installed into a
fresh virtualenv, imports from another folder and brings its console scripts.

The fresh virtualenv takes the dependencies (TensorFlow, Keras, ...) from this one's
site-packages through PYTHONPATH, so the test needs no network; what it checks is the
package itself: its modules, metadata and entry points.
"""

import glob
import os
import shutil
import site
import subprocess
import sys

from tests import testing


def run(*command, returncodes=(0,), **kwargs):
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode in returncodes, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def source_copy(folder):
    """What `pip install .` reads of a checkout, copied (a build writes beside its sources)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "BUILD")
    for name in ("sdl_keras", "pipelines"):
        shutil.copytree(os.path.join(testing.REPO_ROOT, name), os.path.join(folder, name), ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(testing.REPO_ROOT, name), folder)
    return folder


def test_wheel_installs_into_a_fresh_virtualenv_and_imports_from_anywhere(tmp_path):
    source = source_copy(str(tmp_path / "source"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
        source)
    wheel = glob.glob(str(tmp_path / "dist" / "sdl_keras-*.whl"))
    assert len(wheel) == 1, os.listdir(tmp_path / "dist")
    run(sys.executable, "-m", "venv", str(tmp_path / "fresh"))
    python = str(tmp_path / "fresh" / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "TF2_BEHAVIOR")}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())  # the dependencies only
    imported = run(python, "-c", "import sdl_keras, pipelines; print(sdl_keras.__file__, sdl_keras.__version__)",
                   cwd=str(elsewhere), env=env)
    path, version = imported.stdout.split()
    assert path.startswith(str(tmp_path / "fresh")), path  # the installed package, not this checkout
    assert version == __import__("sdl_keras").__version__
    for script in ("sdl_train", "sdl_export", "sdl_model_server", "sdl_to_tfrecord"):
        # absl's --helpshort exits 1 after printing the usage.
        helped = run(str(tmp_path / "fresh" / "bin" / script), "--helpshort", cwd=str(elsewhere), env=env,
                     returncodes=(0, 1))
        assert "USAGE" in helped.stdout and "Traceback" not in helped.stderr, script


if __name__ == "__main__":
    testing.run(__file__)
