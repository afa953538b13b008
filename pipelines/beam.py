"""What the project's Apache Beam pipelines share (`python -m pipelines.to_tfrecord
--runner=...`, `python -m sdl_keras.search build --runner=...`): running one from a command."""

import logging

from pipelines.command import USER_ERRORS


def run_pipeline(pipeline):
    """Runs a Beam pipeline to the end and returns its result. Beam raises a step's failure
    as its own RuntimeError; where it chains the step's exception (DirectRunner in one
    process), a bad-input error (an unreadable image under --strict, a repeated id) is
    raised as itself, so the command reports it in one line as it does without Beam. Beam's
    INFO logs (a line per step and bundle) are left out; its warnings stay."""
    beam_logger = logging.getLogger("apache_beam")
    beam_logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    except Exception as error:
        cause = error.__cause__ or error.__context__
        while cause is not None:
            if isinstance(cause, USER_ERRORS):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise
