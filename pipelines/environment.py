"""TensorFlow settings that only take effect when made before TensorFlow is imported, made
by `import pipelines` (and so by `import sdl_keras`, before Keras imports TensorFlow).
Variables the user has set are left as they are.

- TF_CPP_MIN_LOG_LEVEL: 2 (no C++ INFO or WARNING lines); on hosts without an NVIDIA
  driver 3, which also drops TensorFlow's "failed call to cuInit" error there.
- TF_XLA_FLAGS gains --tf_xla_cpu_global_jit, which lets XLA auto-clustering run on the
  CPU; it is inert unless auto-clustering is turned on (training's --xla_mode).
"""

import os
import sys

CPU_AUTO_CLUSTERING_FLAG = "--tf_xla_cpu_global_jit"


def has_nvidia_driver():
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def configure_tensorflow():
    """Sets the defaults above, unless TensorFlow is already imported (too late) or the
    variables are set."""
    if "tensorflow" in sys.modules:
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if has_nvidia_driver() else "3"
    xla_flags = os.environ.get("TF_XLA_FLAGS", "")
    if CPU_AUTO_CLUSTERING_FLAG not in xla_flags.split():
        os.environ["TF_XLA_FLAGS"] = f"{xla_flags} {CPU_AUTO_CLUSTERING_FLAG}".strip()
