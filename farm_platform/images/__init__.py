"""Code location `farm_platform`: the image pipeline, its checks and sensors (`definitions.py`)."""
