"""Evaluate the compiled suites (`compiled_suites.json`) over a polars frame.

`suites.py` defines the suites with Great Expectations, and `farm_platform.quality.compile`
writes each expectation's type, kwargs and name to `compiled_suites.json` once per code
version. A run evaluates that file with polars expressions, so the run's process never
imports Great Expectations (its import and ephemeral context cost seconds per run).

The semantics are Great Expectations' own on the pandas frame it validated before, and
`farm_platform_tests` hold both to the same outcomes on every case of the quality gate:
- missing values are null or NaN (pandas' `isnull`); map expectations ignore them, but for
  `ToBeNull` / `ToNotBeNull`, which are about them;
- pair expectations ignore a row only when both values are missing (`ignore_row_if`);
  compound-key uniqueness ignores a row whose key values are all missing, and every row of
  a duplicated key is unexpected;
- `mostly`: the expectation fails when the share of expected values among the rows it
  considers is below it; it considers no row: it passes;
- an unexpected row's values are reported as the pandas frame held them (an integer column
  with a null is float, a date is `YYYY-MM-DD 00:00:00`), in the frame's row order, and
  expectations are reported in Great Expectations' validation order (grouped by column).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

ARTIFACT = Path(__file__).with_name("compiled_suites.json")
COMPILE_COMMAND = "python -m farm_platform.quality.compile --write"
PARTITION_COLUMN = "partition"

_MAP = frozenset({"mostly"})
_PAIR = frozenset({"column_A", "column_B", "ignore_row_if", "mostly"})
# Expectation type → the kwargs the evaluator understands; anything else fails compilation.
SUPPORTED_KWARGS: dict[str, frozenset[str]] = {
    "expect_column_values_to_be_between": _MAP
    | {"column", "min_value", "max_value", "strict_min", "strict_max"},
    "expect_column_values_to_be_in_set": _MAP | {"column", "value_set"},
    "expect_column_values_to_be_null": _MAP | {"column"},
    "expect_column_values_to_not_be_null": _MAP | {"column"},
    "expect_compound_columns_to_be_unique": _MAP | {"column_list", "ignore_row_if"},
    "expect_column_pair_values_a_to_be_greater_than_b": _PAIR | {"or_equal"},
    "expect_column_pair_values_to_be_equal": _PAIR,
    "expect_column_value_lengths_to_be_between": _MAP | {"column", "min_value", "max_value"},
}


@dataclass(frozen=True)
class Expectation:
    type: str
    name: str  # the `meta.name` checks report
    kwargs: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        kwargs = self.kwargs
        if "column" in kwargs:
            return [kwargs["column"]]
        if "column_A" in kwargs:
            return [kwargs["column_A"], kwargs["column_B"]]
        return list(kwargs.get("column_list") or [])


@dataclass(frozen=True)
class Failure:
    """A failed expectation: its unexpected rows as (partition label, {column: value}), or,
    when no row is to blame (an expectation that raised), `observed` says why."""

    name: str
    rows: list[tuple[str | None, dict[str, Any]]]
    observed: Any = None


def validation_order(expectations: Sequence[Expectation]) -> list[Expectation]:
    """Great Expectations validates a suite grouped by `column`, in order of first mention,
    with every expectation without one in a group of its own; reports follow that order."""
    groups: dict[str | None, list[Expectation]] = {}
    for expectation in expectations:
        column = expectation.kwargs.get("column")
        groups.setdefault(column if isinstance(column, str) else None, []).append(expectation)
    return [expectation for group in groups.values() for expectation in group]


@functools.cache
def compiled_suites(path: Path = ARTIFACT) -> dict[str, tuple[Expectation, ...]]:
    """The compiled suites by name, each in validation order."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: run `{COMPILE_COMMAND}`") from None
    suites: dict[str, tuple[Expectation, ...]] = {}
    for suite, entries in document["suites"].items():
        expectations = [Expectation(e["type"], e["name"], e["kwargs"]) for e in entries]
        for expectation in expectations:
            if expectation.type not in SUPPORTED_KWARGS:
                raise ValueError(
                    f"{path.name}: suite {suite!r} has expectation type {expectation.type!r}, "
                    f"which this code cannot evaluate: run `{COMPILE_COMMAND}`"
                )
        suites[suite] = tuple(validation_order(expectations))
    return suites


def evaluate(
    frame: pl.DataFrame, suite: str, parameters: Mapping[str, Any] | None = None
) -> list[Failure]:
    """The failed expectations of `suite` over `frame` (which has `PARTITION_COLUMN`)."""
    try:
        expectations = compiled_suites()[suite]
    except KeyError:
        raise KeyError(f"no compiled suite {suite!r}: run `{COMPILE_COMMAND}`") from None
    return evaluate_expectations(frame, expectations, parameters, suite)


def evaluate_expectations(
    frame: pl.DataFrame,
    expectations: Sequence[Expectation],
    parameters: Mapping[str, Any] | None = None,
    suite: str = "",
) -> list[Failure]:
    """The failed ones of `expectations` (in validation order) over `frame`."""
    # NaN is missing to pandas; a column of nothing but nulls is pandas' object column.
    frame = frame.with_columns(
        pl.col(pl.Float32, pl.Float64).fill_nan(None), pl.col(pl.Null).cast(pl.String)
    )
    plain = _plain_values(frame)
    raised, failed = [], []
    for expectation in expectations:
        kwargs = _bind(expectation, suite, parameters or {})
        try:
            failure = _evaluate_one(frame, expectation, kwargs, plain)
        except Exception as exc:  # noqa: BLE001 - reported as the expectation's failure
            raised.append(Failure(expectation.name, [], f"{type(exc).__name__}: {exc}"))
            continue
        if failure is not None:
            (failed if failure.rows else raised).append(failure)
    # Great Expectations reports the expectations that raised first.
    return raised + failed


def _bind(expectation: Expectation, suite: str, parameters: Mapping[str, Any]) -> dict:
    bound = {}
    for key, value in expectation.kwargs.items():
        if isinstance(value, dict) and "$PARAMETER" in value:
            name = value["$PARAMETER"]
            if name not in parameters:
                raise KeyError(
                    f"suite {suite!r} needs the parameter {name!r} "
                    f"(expectation {expectation.name!r}); given: {sorted(parameters)}"
                )
            value = parameters[name]
        bound[key] = value
    return bound


def _evaluate_one(
    frame: pl.DataFrame,
    expectation: Expectation,
    kwargs: dict[str, Any],
    plain: dict[str, Callable[[Any], Any]],
) -> Failure | None:
    columns = expectation.columns
    for column in columns:
        if column not in frame.columns:
            return Failure(
                expectation.name, [], f'Error: The column "{column}" in BatchData does not exist.'
            )
    considered, unexpected = _EXPRESSIONS[expectation.type](kwargs, frame.schema)
    # Selected beside the columns, a literal flag is broadcast to every row.
    flags = frame.select(
        PARTITION_COLUMN,
        *columns,
        considered.alias("__considered"),
        (considered & unexpected).alias("__unexpected"),
    )
    n_considered, n_unexpected = flags["__considered"].sum(), flags["__unexpected"].sum()
    if n_considered == 0 or n_unexpected == 0:
        return None
    if (n_considered - n_unexpected) / n_considered >= kwargs.get("mostly", 1.0):
        return None
    rows = flags.filter(pl.col("__unexpected"))
    values = [rows[column].to_list() for column in columns]
    return Failure(
        expectation.name,
        [
            (label, {c: plain[c](v[i]) for c, v in zip(columns, values, strict=True)})
            for i, label in enumerate(rows[PARTITION_COLUMN].to_list())
        ],
    )


# --------------------------------------------------------------------------- expressions


def _missing(column: str) -> pl.Expr:
    return pl.col(column).is_null()  # NaN is null here: `evaluate` made it so


def _between(column: pl.Expr, kwargs: Mapping[str, Any]) -> pl.Expr:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None and high is None:
        raise ValueError("min_value and max_value cannot both be None")
    inside = pl.lit(True)
    if low is not None:
        inside &= column > low if kwargs.get("strict_min") else column >= low
    if high is not None:
        inside &= column < high if kwargs.get("strict_max") else column <= high
    return ~inside


def _values_between(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    column = kwargs["column"]
    return ~_missing(column), _between(pl.col(column), kwargs)


def _value_lengths_between(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    column = kwargs["column"]
    lengths = pl.col(column).str.len_chars()
    return ~_missing(column), _between(lengths, kwargs)


def _in_set(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    column, value_set = kwargs["column"], list(kwargs["value_set"] or [])
    kinds, dtype = {type(v) for v in value_set}, schema[column]
    if kinds <= {int, float} and dtype.is_numeric():  # by value, like `isin`: 2.0 is in [2]
        values = pl.Series([float(v) for v in value_set], dtype=pl.Float64)
        inside = pl.col(column).cast(pl.Float64).is_in(values.implode())
    elif (kinds <= {str} and dtype == pl.String) or (kinds <= {bool} and dtype == pl.Boolean):
        inside = pl.col(column).is_in(pl.Series(value_set).implode())
    else:  # a mixed set: Python's `in`, value by value
        allowed = set(value_set)
        inside = pl.col(column).map_elements(allowed.__contains__, return_dtype=pl.Boolean)
    return ~_missing(column), ~inside.fill_null(True)


def _null(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    return pl.lit(True), ~_missing(kwargs["column"])


def _not_null(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    return pl.lit(True), _missing(kwargs["column"])


def _compound_unique(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    columns = list(kwargs["column_list"])
    missing = [_missing(c) for c in columns]
    mode = kwargs.get("ignore_row_if", "all_values_are_missing")
    ignored = {
        "all_values_are_missing": pl.all_horizontal(missing),
        "any_value_is_missing": pl.any_horizontal(missing),
        "never": pl.lit(False),
    }[mode]
    # Ignored rows are left out of the comparison: the flag keeps them apart from the rest.
    duplicated = pl.struct(*columns, ignored.alias("__ignored")).is_duplicated()
    return ~ignored, duplicated


def _pair_ignored(kwargs: Mapping[str, Any]) -> pl.Expr:
    a, b = _missing(kwargs["column_A"]), _missing(kwargs["column_B"])
    return {
        "both_values_are_missing": a & b,
        "either_value_is_missing": a | b,
        "neither": pl.lit(False),
    }[kwargs.get("ignore_row_if", "both_values_are_missing")]


def _a_greater_than_b(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    a, b = pl.col(kwargs["column_A"]), pl.col(kwargs["column_B"])
    greater = a >= b if kwargs.get("or_equal") else a > b
    return ~_pair_ignored(kwargs), ~greater.fill_null(False)


def _pair_equal(kwargs: Mapping[str, Any], schema: pl.Schema) -> tuple[pl.Expr, pl.Expr]:
    equal = pl.col(kwargs["column_A"]) == pl.col(kwargs["column_B"])
    return ~_pair_ignored(kwargs), ~equal.fill_null(False)


# Expectation type → (rows it considers, rows it finds unexpected) as polars expressions.
_EXPRESSIONS: dict[str, Callable[[Mapping[str, Any], pl.Schema], tuple[pl.Expr, pl.Expr]]] = {
    "expect_column_values_to_be_between": _values_between,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_null": _null,
    "expect_column_values_to_not_be_null": _not_null,
    "expect_compound_columns_to_be_unique": _compound_unique,
    "expect_column_pair_values_a_to_be_greater_than_b": _a_greater_than_b,
    "expect_column_pair_values_to_be_equal": _pair_equal,
    "expect_column_value_lengths_to_be_between": _value_lengths_between,
}


# --------------------------------------------------------------------------- reported values


def _plain_values(frame: pl.DataFrame) -> dict[str, Callable[[Any], Any]]:
    """Per column, a value as the pandas frame Great Expectations saw held it, made plain
    (a number, string, bool or None)."""
    converters: dict[str, Callable[[Any], Any]] = {}
    for column, dtype in frame.schema.items():
        if dtype == pl.Date:
            converters[column] = _pandas_date
        elif dtype == pl.Datetime:
            converters[column] = _pandas_datetime
        elif dtype.is_integer() and frame[column].null_count():
            converters[column] = _float_or_nan  # pandas holds ints with a null as floats
        elif dtype.is_float():
            converters[column] = _float_or_nan
        else:
            converters[column] = _identity
    return converters


def _identity(value: Any) -> Any:
    return value


def _float_or_nan(value: Any) -> float:
    # A new NaN object per value, like numpy's: two missing values of a photo are both
    # kept (a NaN equals only itself, and `math.nan` would be one object for all).
    return float("nan") if value is None else float(value)


def _pandas_date(value: dt.date | None) -> str:
    return "NaT" if value is None else f"{value.isoformat()} 00:00:00"


def _pandas_datetime(value: dt.datetime | None) -> str:
    return "NaT" if value is None else str(value)
