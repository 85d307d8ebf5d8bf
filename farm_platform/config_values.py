"""Validators of the settings `farm_platform.config` names, and the values derived from them.

Each validator takes a setting's raw text (None or "" when unset) and returns its value,
or raises ConfigError naming the variable and what to give instead. The Dagster
resources call them on their fields (the definitions modules fill those fields from the
environment, through `EnvVar` or once when the definitions load); command-line code calls
them on `config.value(NAME)`.
"""

from __future__ import annotations

import datetime as dt
import os
import re

from farm_platform import config
from farm_platform.config import ConfigError


def positive_number(name: str, raw: str | float | None, default: float) -> float:
    """`raw` as a number greater than 0 (`default` when unset), or an error naming `name`."""
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


def env_number(name: str, default: float) -> float:
    """`$name` as a number greater than 0 (`default` when unset)."""
    return positive_number(name, config.value(name), default)


def whole_number(name: str, value: float) -> int:
    """`value` (already a positive number) as an int, or an error naming `name`."""
    if value != int(value):
        raise ConfigError(f"{name}={value:g} is not a whole number")
    return int(value)


def inference_mode(raw: str | None) -> str:
    """`FARM_INFERENCE`: `local` (default) or `oip`."""
    mode = raw or "local"
    if mode not in config.INFERENCE_MODES:
        raise ConfigError(
            f"{config.FARM_INFERENCE}={mode!r} must be one of {', '.join(config.INFERENCE_MODES)}"
        )
    return mode


def oip_url(raw: str | None) -> str:
    """`FARM_OIP_URL`: the model server's gRPC (grpc://host:port) or REST (http://host:port)
    address, or its replicas' addresses comma-separated, without trailing slashes."""
    if not raw:
        raise ConfigError(
            f"{config.FARM_OIP_URL} is not set: {config.FARM_INFERENCE}=oip needs the model "
            "server's address"
        )
    return _oip_addresses(config.FARM_OIP_URL, raw)


def _oip_addresses(name: str, raw: str) -> str:
    urls = [url.strip().rstrip("/") for url in raw.split(",") if url.strip()]
    for url in urls or [raw]:
        if not url.startswith(("grpc://", "http://", "https://")):
            raise ConfigError(
                f"{name}={raw!r}: {url!r} must start with grpc:// (the server's "
                "--grpc-port) or http:// (its --port)"
            )
    return ",".join(urls)


def external_oip_url(name: str, card: str) -> str:
    """The address an external_oip card (`card`: its id and version) names by setting."""
    assert name.startswith(config.EXTERNAL_OIP_SETTING_PREFIX), name  # the card parser checks
    raw = config.value(name)
    if not raw:
        raise ConfigError(
            f"{name} is not set: the model card {card} reads its server's address from it"
        )
    return _oip_addresses(name, raw)


def external_oip_token(name: str | None) -> str | None:
    """The bearer token an external_oip card names by setting, if any (None: unset)."""
    if name is None:
        return None
    assert name.startswith(config.EXTERNAL_OIP_SETTING_PREFIX), name
    return config.value(name)


def available_cores() -> int:
    """Cores this process may run on: a container's or taskset's CPU set, not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity outside Linux
        return max(1, os.cpu_count() or 1)


def torch_threads(raw: str | int | None) -> int:
    """`FARM_TORCH_THREADS` (a whole number >= 1), else `available_cores()`."""
    if raw is None or str(raw).strip() == "":
        return available_cores()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{config.FARM_TORCH_THREADS}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{config.FARM_TORCH_THREADS}={raw!r} must be at least 1")
    return value


def omp_wait_policy(raw: str | None) -> str:
    """`OMP_WAIT_POLICY` (ACTIVE or PASSIVE, any case), else the platform's default."""
    if raw is None or raw.strip() == "":
        return config.DEFAULT_OMP_WAIT_POLICY
    if raw.strip().upper() not in config.OMP_WAIT_POLICIES:
        raise ConfigError(
            f"{config.OMP_WAIT_POLICY}={raw!r} is not an OpenMP wait policy: use "
            f"{' or '.join(config.OMP_WAIT_POLICIES)}, or unset it for "
            f"{config.DEFAULT_OMP_WAIT_POLICY}"
        )
    return raw.strip().upper()


def torch_device(raw: str | None, cuda_devices: int) -> str:
    """The device the models run on: "cpu" or "cuda:N", from `FARM_TORCH_DEVICE`.

    `cuda_devices` is how many CUDA devices torch sees (the caller asks torch, so this
    module never imports it). `auto` (the default) is cuda:0 when there is one, else cpu;
    `cuda` or `cuda:N` naming a device that is not there is an error, never a silent CPU run.
    """
    raw = raw or config.DEFAULT_TORCH_DEVICE
    name = config.FARM_TORCH_DEVICE
    value = raw.strip().lower()
    if value == "auto":
        return "cuda:0" if cuda_devices > 0 else "cpu"
    if value == "cpu":
        return "cpu"
    named = re.fullmatch(r"cuda(?::([0-9]+))?", value)
    if named is None:
        raise ConfigError(
            f"{name}={raw!r}: use auto (CUDA when there is a GPU), cpu, cuda or cuda:N"
        )
    index = int(named.group(1) or 0)
    if cuda_devices == 0:
        raise ConfigError(
            f"{name}={raw!r} but torch sees no CUDA device (a CPU build of torch, "
            "no GPU, or no driver): set it to auto or cpu, or install a CUDA build of torch "
            "(docs/model-server-and-gpu.md, Inference on a GPU)"
        )
    if index >= cuda_devices:
        raise ConfigError(
            f"{name}={raw!r} but torch sees {cuda_devices} CUDA device(s) "
            f"(cuda:0..cuda:{cuda_devices - 1})"
        )
    return f"cuda:{index}"


def torch_dtype(raw: str | None) -> str:
    """`FARM_TORCH_DTYPE`: float32 (the default) or bfloat16."""
    raw = raw or config.DEFAULT_TORCH_DTYPE
    value = raw.strip().lower()
    if value not in config.TORCH_DTYPES:
        raise ConfigError(
            f"{config.FARM_TORCH_DTYPE}={raw!r}: use one of {', '.join(config.TORCH_DTYPES)}"
        )
    return value


def url_origin(url: str) -> str | None:
    """The origin (scheme://host[:port], lower case, no default port) of an http(s) URL."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def webserver_allowed_origins(raw: str | None) -> frozenset[str]:
    """`FARM_WEBSERVER_ALLOWED_ORIGINS`: the origins whose pages may change anything."""
    raw = raw or ""
    origins = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        origin = url_origin(item)
        rest = item.split("://", 1)[-1].rstrip("/")
        if origin is None or any(mark in rest for mark in "/?#@"):
            raise ConfigError(
                f"{config.FARM_WEBSERVER_ALLOWED_ORIGINS}={raw!r}: {item!r} is not an origin; "
                "give the address the UI is opened at, scheme://host[:port] with no path, e.g. "
                "https://dagster.example.com,http://127.0.0.1:3000"
            )
        origins.add(origin)
    return frozenset(origins)


def gate_tolerance(raw: str | None) -> float:
    """`FARM_GATE_TOLERANCE`: how much worse than the active version a new one may be."""
    name = config.FARM_GATE_TOLERANCE
    try:
        value = float(raw) if raw else config.DEFAULT_GATE_TOLERANCE
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"{name}={raw!r} must be a share from 0 to 1")
    return value


def watchdog_interval_seconds() -> float:
    """`$FARM_WATCHDOG_INTERVAL_SECONDS`: how often the watchdog asks each code server."""
    return env_number(
        config.FARM_WATCHDOG_INTERVAL_SECONDS, config.DEFAULT_WATCHDOG_INTERVAL_SECONDS
    )


def code_server_check_timeout_seconds() -> float:
    """`$FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS`: the wait for one code server's answer."""
    return env_number(
        config.FARM_CODE_SERVER_CHECK_TIMEOUT_SECONDS,
        config.DEFAULT_CODE_SERVER_CHECK_TIMEOUT_SECONDS,
    )


def watchdog_failures() -> int:
    """Missed answers in a row (a whole number >= 1) before a code server is replaced."""
    name = config.FARM_WATCHDOG_FAILURES
    return whole_number(name, env_number(name, config.DEFAULT_WATCHDOG_FAILURES))


def sensor_interval_seconds() -> int:
    """`$FARM_SENSOR_INTERVAL_SECONDS`: the ingest sensors' minimum interval."""
    name = config.FARM_SENSOR_INTERVAL_SECONDS
    return max(1, int(env_number(name, config.DEFAULT_SENSOR_INTERVAL_SECONDS)))


def trial_start_date(raw: str | None) -> dt.date:
    """`FARM_TRIAL_START_DATE`: the trial's first day partition (YYYY-MM-DD)."""
    raw = raw or config.DEFAULT_TRIAL_START_DATE
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{config.FARM_TRIAL_START_DATE}={raw!r} is not a date (YYYY-MM-DD)"
        ) from None


def treatment_start(raw: str | None) -> dt.date | None:
    """`FARM_TREATMENT_START`: the day treatment begins, or None (unset: no pre-period)."""
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"{config.FARM_TREATMENT_START}={raw!r} is not a date: give the day treatment "
            "begins as YYYY-MM-DD, or unset it for a trial without a pre-period"
        ) from None


def trial_timezone(raw: str | None) -> str:
    """`FARM_TRIAL_TIMEZONE`: an IANA time zone name (default UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = raw or config.DEFAULT_TRIAL_TIMEZONE
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{config.FARM_TRIAL_TIMEZONE}={name!r} is not an IANA time zone (e.g. "
            "Europe/Amsterdam, Australia/Brisbane, UTC)"
        ) from None
    return name
