"""Operator commands: backfills, model versions, dead letters, replay, reconciliation.

Never imported by a code location.
"""
