"""A code location of one tiny job, for the guarded webserver's tests: a run of it is only
queued (no daemon dequeues it), which is enough to see a mutation take effect."""

from dagster import Definitions, job, op


@op
def say_hello() -> str:
    return "hello"


@job
def hello() -> None:
    say_hello()


defs = Definitions(jobs=[hello])
