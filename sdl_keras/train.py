"""Train an SDL model: `python -m sdl_keras.train --flagfile=configs/demo.flags`.

A thin CLI over `sdl_keras.training.train`; every TrainConfig field is a flag.
Multi-host runs: the same command on every host, each with its TF_CONFIG
(docs/training.md).
"""

import os

# TensorFlow reads TF_XLA_FLAGS once, when it is imported: allow XLA auto-clustering on
# the CPU (sdl_keras.distribute.CPU_AUTO_CLUSTERING_FLAG; inert unless --xla_mode turns
# auto-clustering on).
if "--tf_xla_cpu_global_jit" not in os.environ.get("TF_XLA_FLAGS", "").split():
    os.environ["TF_XLA_FLAGS"] = (os.environ.get("TF_XLA_FLAGS", "") + " --tf_xla_cpu_global_jit").strip()

from absl import app  # noqa: E402

from sdl_keras import cli, training  # noqa: E402


cli.define_config_flags(training.TrainConfig, training.FIELD_HELP)


def main(argv):
    del argv
    cli.setup_logging()
    config = cli.config_from_flags(training.TrainConfig)
    training.train(config)
    print(f"Run written to {config.output_dir}")


if __name__ == "__main__":
    app.run(main)
