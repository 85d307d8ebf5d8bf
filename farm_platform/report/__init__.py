"""The effectiveness report without Dagster: effect statistics and their trend, attrition
and dropout, the pre-treatment period, the headline, the report's data, plots, sections and
rendering. `analytics/report.py` wraps it in the daily report asset."""
