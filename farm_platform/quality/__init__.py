"""Data quality: Great Expectations suites run as Dagster asset checks (docs/data-quality.md).

Nothing here imports great_expectations at module level: the code location loads
`farm_platform.quality.expectations` names only when an op runs a check.
"""
