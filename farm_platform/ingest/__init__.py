"""Drone-image ingestion without Dagster: the messages (`messages`), the warehouse's arrival
queue (`arrivals`), one sensor tick (`tick`) and the retries of failed photos (`retries`).
`images/sensors.py` wraps the tick in Dagster sensors."""
