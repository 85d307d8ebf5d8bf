from farm_platform.assets.images import drone_images
from farm_platform.assets.inference import grade_leaves
from farm_platform.assets.models import registered_models

__all__ = ["drone_images", "grade_leaves", "registered_models"]
