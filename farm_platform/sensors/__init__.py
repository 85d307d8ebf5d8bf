from farm_platform.sensors.drone_image_sensor import drone_image_sensor
from farm_platform.sensors.model_registry_sensor import model_registry_sensor
from farm_platform.sensors.requeue_failed_photos import requeue_failed_photos

__all__ = ["drone_image_sensor", "model_registry_sensor", "requeue_failed_photos"]
