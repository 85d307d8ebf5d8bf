"""Model registry, architectures and inference of the leaf detector and disease graders.

Nothing here may import torch at package import: Dagster imports the code location (and
with it `farm_platform.ml.registry`) in processes that never run a model.
"""

import os

from farm_platform import config

# OpenMP reads its wait policy once, when torch loads, and every torch import of the
# platform comes through this package: the default goes in first. Spinning idle threads
# cost a run a sixth of its CPU and no wall time (docs/model-server-and-gpu.md). Into the
# process's environment (what OpenMP and child processes read), not `os.environ`: a
# caller's own copy of its settings stays as it set it.
if not os.environ.get(config.OMP_WAIT_POLICY, "").strip():
    os.putenv(config.OMP_WAIT_POLICY, config.DEFAULT_OMP_WAIT_POLICY)
