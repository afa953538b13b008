"""Train an SDL model: `python -m sdl_keras.train --flagfile=configs/demo.flags`.

A thin command line over `sdl_keras.training.train`: every TrainConfig field
(sdl_keras/config.py) is a flag, with its help beside the field; `--run_dir` is
`--output_dir`. Multi-host runs: the same command on every host, each with its
TF_CONFIG (docs/training.md).
"""

from absl import flags

from sdl_keras import cli
from sdl_keras.config import TrainConfig

FLAGS = flags.FLAGS


def define_flags():
    cli.define_config_flags(TrainConfig, aliases={"run_dir": "output_dir"})


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.training import train

    config = cli.config_from_flags(TrainConfig)
    train(config)
    print(f"Run written to {config.runtime.output_dir}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()
