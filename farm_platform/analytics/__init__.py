"""The analytics code location: dbt models, the effectiveness report and its schedule.

A code location of its own so that the image runs never import dbt.
"""
