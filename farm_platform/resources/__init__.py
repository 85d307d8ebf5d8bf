from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.field_map import FieldMapResource
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.pubsub import PubSubResource
from farm_platform.resources.warehouse import WarehouseResource

__all__ = [
    "BucketResource",
    "FieldMapResource",
    "ModelRegistryResource",
    "PubSubResource",
    "WarehouseResource",
]
