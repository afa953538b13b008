"""The command lines are thin absl layers: importable together, each a flags + main module
with a console script and a Bazel py_binary, and every flagfile in configs/ parses with
its command's own flags."""

import ast
import glob
import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest
from absl import flags

from tests import testing

FLAGS = flags.FLAGS


def command_modules():
    """Every module of sdl_keras/ and pipelines/ that defines `define_flags` and `run`: a command."""
    found = []
    for path in sorted(glob.glob(os.path.join(testing.REPO_ROOT, "sdl_keras", "**", "*.py"), recursive=True)
                       + glob.glob(os.path.join(testing.REPO_ROOT, "pipelines", "**", "*.py"), recursive=True)):
        tree = ast.parse(open(path, encoding="utf-8").read())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        if {"define_flags", "run", "main"} <= functions:
            found.append(os.path.relpath(path, testing.REPO_ROOT)[:-3].replace(os.sep, "."))
    return found


COMMANDS = command_modules()


def test_the_commands_are_the_documented_ones():
    assert set(COMMANDS) == {
        "sdl_keras.train", "sdl_keras.evaluate", "sdl_keras.export", "sdl_keras.convert", "sdl_keras.tag",
        "sdl_keras.search", "sdl_keras.calibrate", "sdl_keras.ablations", "sdl_keras.compare", "sdl_keras.reproduce",
        "sdl_keras.serving.server",
        "sdl_keras.serving.client", "pipelines.demo", "pipelines.to_tfrecord",
    }


def test_importing_every_command_module_defines_no_flag():
    for module in COMMANDS:
        importlib.import_module(module)  # a DuplicateFlagError would fail here
    defined = {module: [f.name for f in module_flags] for module, module_flags in FLAGS.flags_by_module_dict().items()}
    ours = {module: names for module, names in defined.items() if str(module).startswith(("sdl_keras", "pipelines"))}
    assert not ours, f"flags defined at import: {ours}"


@pytest.mark.parametrize("module", COMMANDS)
def test_each_command_is_flags_and_a_main(module):
    path = os.path.join(testing.REPO_ROOT, *module.split(".")) + ".py"
    source = open(path, encoding="utf-8").read()
    tree = ast.parse(source)
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)], f"{module} defines classes: move them"
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(functions) <= 4, f"{module}: {functions}; its logic belongs in a library module"
    assert len(source.splitlines()) <= 110, f"{module} has {len(source.splitlines())} lines"


def test_each_command_has_a_console_script_and_a_bazel_binary():
    with open(os.path.join(testing.REPO_ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert sorted(entry.split(":")[0] for entry in scripts.values()) == sorted(COMMANDS)
    assert all(entry.endswith(":run") for entry in scripts.values())
    binaries = {}
    for build in ("sdl_keras/BUILD", "pipelines/BUILD"):
        text = open(os.path.join(testing.REPO_ROOT, build), encoding="utf-8").read()
        package = os.path.dirname(build)
        for main in re.findall(r'py_binary\(.*?main = "([^"]+)"', text, re.S):
            binaries[f"{package}/{main}"[:-3].replace("/", ".")] = build
    assert sorted(binaries) == sorted(COMMANDS)


def _command_of(flagfile):
    """The command a flagfile is for: the `python -m X` its comments name; the ablations'
    switch files are training flags."""
    name = os.path.basename(flagfile)
    if name.startswith("ablation_"):
        return "sdl_keras.train"
    text = open(flagfile, encoding="utf-8").read()
    match = re.search(r"python -m ([\w.]+)", text)
    assert match, f"{flagfile} does not say which command it is for (a '# python -m ...' comment)"
    return match.group(1)


FLAGFILES = sorted(glob.glob(os.path.join(testing.REPO_ROOT, "configs", "*.flags")))


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=os.path.basename)
def test_every_flagfile_parses_with_its_commands_flags(flagfile):
    module = importlib.import_module(_command_of(flagfile))
    before = set(FLAGS)
    module.define_flags()
    try:
        try:
            FLAGS(["command", f"--flagfile={flagfile}"])
        except flags.IllegalFlagValueError as error:
            # A flag the user gives on the command line (a checkpoint, an index): not the flagfile's job.
            assert "must have a value other than None" in str(error), error
    finally:
        FLAGS.unparse_flags()
        for name in set(FLAGS) - before:
            delattr(FLAGS, name)


def test_a_command_reports_bad_input_in_one_line():
    done = subprocess.run([sys.executable, "-m", "sdl_keras.evaluate", "--run_dir=/nowhere/run"],
                          capture_output=True, text=True, env=testing.python_env(), timeout=120)
    assert done.returncode == 1
    assert "sdl_keras.evaluate: error: /nowhere/run is not a complete run directory" in done.stderr
    assert "Traceback" not in done.stderr and "cuInit" not in done.stderr


if __name__ == "__main__":
    testing.run(__file__)
