"""Data quality: Great Expectations suites run as Dagster asset checks (docs/data-quality.md).

Suites are defined with Great Expectations and compiled once per code version
(`farm_platform.quality.compile`); runs evaluate the compiled suites and never import
great_expectations, nor does the code location.
"""
