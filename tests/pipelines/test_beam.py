"""The Beam pipelines' runner: DirectRunner runs on Beam's FnApiRunner (never a Prism
binary fetched from GitHub), in worker processes with --direct_running_mode=multi_processing,
with the options passed through; a bad-input error inside a step is raised as itself."""

import glob
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.beam import is_direct, new_pipeline, run_pipeline
from tests import testing


def test_direct_runner_runs_in_worker_processes(tmp_path):
    options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    pipeline = new_pipeline(options)
    assert isinstance(pipeline.runner, FnApiRunner) and is_direct(options)
    (pipeline | beam.Create(range(6)) | beam.Map(lambda _: str(os.getpid()))
     | beam.io.WriteToText(str(tmp_path / "pids")))
    run_pipeline(pipeline)
    pids = {line.strip() for path in glob.glob(str(tmp_path / "pids*")) for line in open(path)}
    assert pids and str(os.getpid()) not in pids  # the workers' processes, not this one
    assert not is_direct(PipelineOptions(["--runner=FlinkRunner"]))
    assert not isinstance(new_pipeline(PipelineOptions(["--runner=FlinkRunner"])).runner, FnApiRunner)


def refuse(value):
    raise ValueError(f"bad value {value}")


def test_a_steps_bad_input_error_is_raised_as_itself():
    pipeline = new_pipeline(PipelineOptions(["--runner=DirectRunner"]))
    pipeline | beam.Create([3]) | beam.Map(refuse)
    with pytest.raises(ValueError, match="^bad value 3$"):
        run_pipeline(pipeline)


if __name__ == "__main__":
    testing.run(__file__)
