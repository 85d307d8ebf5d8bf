"""Sensor ticks that keep, for the life of the code-server process, what Dagster would
otherwise build anew on every tick.

Dagster evaluates a sensor that declares resources by building a `DagsterInstance` from
the daemon's instance ref (its storages; on SQLite an alembic revision check that reads
every migration file, on PostgreSQL a connection per storage) and then the resources (a new
Pub/Sub client and its channel). Every 10 s, for three sensors, that was most of an idle
platform's CPU. Here the sensor's registered function takes only its context; the instance
and the resources are built once per process and instance ref, with Dagster's own
`build_resources` from the code location's resource definitions, and handed to the tick
function, which tests call with their own resources as before.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from dagster import DagsterInstance, SensorEvaluationContext, build_resources, serialize_value

# (instance ref, resource keys) → the process's instance and built resources.
_kept: dict[tuple[str, tuple[str, ...]], tuple[DagsterInstance, dict[str, Any]]] = {}
_kept_guard = threading.Lock()
# Open for the life of the process: the instance and the resources' contexts.
_process_scope = contextlib.ExitStack()
# Closed before the interpreter tears its modules down (a resource's teardown then runs).
atexit.register(_process_scope.close)


def kept_resources(
    context: SensorEvaluationContext, keys: tuple[str, ...]
) -> tuple[DagsterInstance, dict[str, Any]]:
    """The instance and the resources `keys` of the code location, built on this process's
    first tick of an instance ref and reused by every later one."""
    ref = context.instance_ref
    if ref is None or context.repository_def is None:
        raise RuntimeError(
            "A sensor of this location is evaluated by a Dagster daemon through its code "
            "server; in a test, call its tick function with resources instead."
        )
    key = (serialize_value(ref), keys)
    with _kept_guard:
        if key not in _kept:
            instance = _process_scope.enter_context(DagsterInstance.from_ref(ref))
            definitions = context.repository_def.get_top_level_resources()
            built = _process_scope.enter_context(
                build_resources({name: definitions[name] for name in keys}, instance=instance)
            )
            _kept[key] = (instance, {name: getattr(built, name) for name in keys})
        return _kept[key]


def with_kept_resources(tick: Callable[..., Any]) -> Callable[[SensorEvaluationContext], Any]:
    """`tick(context, **resources[, instance=...])` as a sensor's evaluation function of
    the context alone. Its resource parameters are those after `context` (`instance`, if
    it takes one, gets the kept instance)."""
    parameters = list(inspect.signature(tick).parameters)
    keys = tuple(name for name in parameters[1:] if name != "instance")
    takes_instance = "instance" in parameters

    def evaluate(context: SensorEvaluationContext) -> Any:
        instance, resources = kept_resources(context, keys)
        return tick(context, **resources, **({"instance": instance} if takes_instance else {}))

    evaluate.__name__ = tick.__name__
    evaluate.__doc__ = tick.__doc__
    return evaluate
