"""What the project's Apache Beam pipelines share (`python -m pipelines.to_tfrecord
--runner=...`, `python -m sdl_keras.search build --runner=...`): making one for a command's
Beam options, and running it."""

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from pipelines.command import DISK_FULL, USER_ERRORS

def is_direct(options):
    """Whether PipelineOptions name DirectRunner (Beam's default)."""
    return str(options.view_as(StandardOptions).runner or "DirectRunner").lower() in ("directrunner", "direct")


def new_pipeline(options):
    """A Beam pipeline with `options` (PipelineOptions: --runner=..., Beam's options).

    DirectRunner runs on Beam's FnApiRunner: in this process, or in --direct_num_workers
    worker processes with --direct_running_mode=multi_processing. (Beam 2.77's DirectRunner
    would first fetch its Prism runner from GitHub, at a run where it is not cached, and fall
    back to this one where it cannot, as on a machine offline; Prism's workers take neither
    option.) Any other runner is Beam's."""
    if not is_direct(options):
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The options reach the workers as DirectRunner passes them (its provision info).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)


def run_pipeline(pipeline):
    """Runs a Beam pipeline to the end and returns its result. Beam raises a step's failure
    as its own RuntimeError; where it chains the step's exception (DirectRunner in one
    process), a bad-input error (an unreadable image under --strict, a repeated id) or a
    full disk is raised as itself, so the command reports it in one line as it does without
    Beam. Beam's INFO logs (a line per step and bundle) are left out; its warnings stay."""
    beam_logger = logging.getLogger("apache_beam")
    beam_logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    except Exception as error:
        cause = error.__cause__ or error.__context__
        while cause is not None:
            if isinstance(cause, USER_ERRORS) or isinstance(cause, OSError) and cause.errno in DISK_FULL:
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise
