from farm_platform.assets.inference import image_pipeline
from farm_platform.assets.models import registered_models

__all__ = ["image_pipeline", "registered_models"]
