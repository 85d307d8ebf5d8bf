"""Great Expectations' own validation of the suites: the reference the compiled evaluator
(`farm_platform.quality.compiled`) is held to, and the engine runs used before it.

`evaluate` has the compiled evaluator's signature and result, computed by Great Expectations
on the pandas frame (an ephemeral context, `result_format` COMPLETE, unexpected rows indexed
by partition). `great_expectations_engine()` makes `validate` (so `validate_photos`, the
gate's and the assets' path) use it: the parity tests and benchmarks compare the two.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import polars as pl

from farm_platform.quality import expectations, suites
from farm_platform.quality.compiled import PARTITION_COLUMN, Expectation, Failure


@functools.cache
def _batch_definition() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("farm_platform")
    asset = source.add_dataframe_asset(name="partition_frames")
    return asset.add_batch_definition_whole_dataframe("whole_frame")


def evaluate(
    frame: pl.DataFrame, suite: str, parameters: Mapping[str, Any] | None = None
) -> list[Failure]:
    """The failed expectations of `suite` over `frame`, as Great Expectations finds them."""
    # A fresh suite each time: validating substitutes the parameters in it.
    return validate_suite(frame, suites.SUITES[suite](), parameters)


def validate_suite(
    frame: pl.DataFrame, suite: Any, parameters: Mapping[str, Any] | None = None
) -> list[Failure]:
    """The failed expectations of the Great Expectations `suite` over `frame`."""
    result = (
        _batch_definition()
        .get_batch(batch_parameters={"dataframe": frame.to_pandas()})
        .validate(
            suite,
            expectation_parameters=dict(parameters or {}),
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [PARTITION_COLUMN],
            },
        )
    )
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        name = (config.meta or {}).get("name", config.type)
        columns = Expectation(config.type, name, config.kwargs).columns
        rows = [
            (row.get(PARTITION_COLUMN), {c: _plain(row.get(c)) for c in columns})
            for row in (outcome.result or {}).get("unexpected_index_list") or []
        ]
        observed = _exception(outcome.exception_info) or (outcome.result or {}).get(
            "observed_value"
        )
        failures.append(Failure(name, rows, _plain(observed)))
    return failures


def _exception(info: Mapping[str, Any] | None) -> str | None:
    """The message of an exception the expectation raised: at the top of `exception_info`,
    or per metric when a metric (such as a missing column's) raised."""
    info = info or {}
    if info.get("exception_message"):
        return info["exception_message"]
    nested = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    return next((message for message in nested if message), None)


def _plain(value: Any) -> Any:
    """JSON-friendly (numpy scalars become Python values, timestamps strings)."""
    if hasattr(value, "item"):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def comparable(failures: list[Failure]) -> str:
    """Every field of every failure, in order, as text (where NaN equals NaN)."""
    return json.dumps([(f.name, f.rows, f.observed) for f in failures], indent=1, default=str)


@contextlib.contextmanager
def great_expectations_engine() -> Iterator[None]:
    """Within: every check validates with Great Expectations instead of the compiled file."""
    with mock.patch.object(expectations, "evaluate_suite", evaluate):
        yield
