"""What every command line of the project shares (pipelines' and sdl_keras' alike): the
entry point that turns bad input into one clear line instead of a traceback.

Command modules define their flags in `define_flags()`, called by `run()`, so importing
several command modules in one process defines nothing twice.
"""

import errno
import logging
import os
import sys

from absl import app, flags

# Errors that mean bad input (a missing file, an unknown tag, a bad value) or a resource
# another process holds (an index's writer lock): the message is what the user needs, the
# traceback is not. SDL_KERAS_TRACEBACK=1 shows it anyway.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               TimeoutError)
# OSErrors of a full disk or quota: the user frees space; the writers keep the previous files.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def no_arguments(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")


def error_message(error):
    """The user-facing text of a USER_ERRORS exception (a KeyError's own message, unquoted)."""
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def program_name(main):
    """How a command is named in its messages: its module ("sdl_keras.search"), whether it
    runs as `python -m` or as a console script."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else os.path.basename(sys.argv[0])
    return module.removesuffix(".__main__")


def split_pipeline_options(argv, runner):
    """(argv without them, Beam pipeline options) of a command that runs as an Apache Beam
    pipeline with --runner: the flags absl does not know are Beam's (--direct_num_workers=2,
    --project=..., in the --name=value form) and go to the pipeline with the runner; without
    --runner such a flag is an error, as any unknown flag."""
    options = [arg for arg in argv[1:] if arg.startswith("-")]
    if options and not runner:
        raise app.UsageError(f"Unknown flag(s): {' '.join(options)} (Beam pipeline options need --runner).")
    rest = [argv[0]] + [arg for arg in argv[1:] if not arg.startswith("-")]
    return rest, ([f"--runner={runner}"] + options if runner else [])


def _parse_known_flags(argv):
    """absl's flag parsing, leaving the flags it does not know in argv (for
    `split_pipeline_options`)."""
    try:
        return flags.FLAGS(argv, known_only=True)
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)


def run(main, define_flags, pipeline_options=False):
    """The entry point of a command (`python -m` and console scripts alike): the caller's
    working directory under `bazel run`, flags, then `main(argv)`, whose return value is
    the exit status; bad input (and a full disk) ends with its message and exit status 1.
    With `pipeline_options`, flags absl does not know reach main's argv (Beam's options)."""
    # `bazel run` starts binaries in their runfiles; relative paths mean the caller's folder.
    if os.environ.get("BUILD_WORKING_DIRECTORY"):
        os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
    define_flags()

    def guarded(argv):
        setup_logging()
        try:
            return main(argv)
        except (*USER_ERRORS, OSError) as error:
            if os.environ.get("SDL_KERAS_TRACEBACK") or not (
                    isinstance(error, USER_ERRORS) or error.errno in DISK_FULL):
                raise
            print(f"{program_name(main)}: error: {error_message(error)}", file=sys.stderr)
            return 1

    parser = _parse_known_flags if pipeline_options else app.parse_flags_with_usage
    app.run(lambda argv: sys.exit(guarded(argv) or 0), flags_parser=parser)
