"""Grading a day's photos without Dagster: reading and decoding them (`photos`) and running
them through the detector and graders in chunks (`chunks`). `images/pipeline.py` wraps it in
the day's assets."""
