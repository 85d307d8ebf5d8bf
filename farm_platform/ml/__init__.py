"""Model registry, architectures and inference of the leaf detector and disease graders.

Nothing here may import torch at package import: Dagster imports the code location (and
with it `farm_platform.ml.registry`) in processes that never run a model.
"""
