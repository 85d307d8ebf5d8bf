"""Resource fields from the environment: what the definitions modules (and commands that
build a resource outside Dagster) pass to a resource whose `VARIABLES` name each field's
setting. Unset variables are left out, so the field keeps its default (the setting's)."""

from __future__ import annotations

from typing import Any

from dagster import EnvVar

from farm_platform import config, config_values


def environment_fields(resource: Any, env_vars: bool = True) -> dict[str, Any]:
    """`resource.VARIABLES`' set variables as field values.

    A number is read now and checked (ConfigError names the variable): Dagster's `EnvVar`
    carries text only. A text field is `EnvVar(name)` when `env_vars` (the launchpad then
    names the variable, and a token's value is never shown), else the text itself."""
    values: dict[str, Any] = {}
    for field, name in resource.VARIABLES.items():
        text = config.value(name)
        if text is None:
            continue
        default = resource.model_fields[field].default
        if isinstance(default, int | float) and not isinstance(default, bool):
            values[field] = type(default)(config_values.positive_number(name, text, default))
        else:
            values[field] = EnvVar(name) if env_vars else text
    return values
