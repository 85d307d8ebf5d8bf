"""The image location's sensors evaluated as its code server evaluates them (from the
daemon's instance ref): the instance and the resources are built once per process, and
the ticks still see what a tick must."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_repo_models


def test_ticks_reuse_one_instance_and_their_resources(tmp_path: Path, monkeypatch) -> None:
    from dagster import DagsterInstance, Definitions, RunRequest, materialize
    from dagster._grpc.impl import get_external_sensor_execution

    from farm_platform.admin.instance import prepare_dagster_home
    from farm_platform.images import sensor_evaluation
    from farm_platform.images.registered_models import registered_models
    from farm_platform.images.sensors import build_sensors
    from farm_platform.resources import ModelRegistryResource, WarehouseResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    resources = {
        "models": ModelRegistryResource(models_dir=str(copy_repo_models(tmp_path / "models"))),
        "warehouse": WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}"),
        "ingest_policy": IngestPolicyResource(),
    }
    repository = Definitions(
        assets=[registered_models], sensors=build_sensors(10), resources=resources
    ).get_repository_def()
    built: list[object] = []
    from_ref = DagsterInstance.from_ref

    def counting_from_ref(ref):  # the real one, counted
        built.append(ref)
        return from_ref(ref)

    monkeypatch.setattr(DagsterInstance, "from_ref", staticmethod(counting_from_ref))
    monkeypatch.setattr(sensor_evaluation, "_kept", {})
    prepare_dagster_home(tmp_path / "home")
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        ref = instance.get_ref()

        def tick(cursor: str | None = None):
            data = get_external_sensor_execution(
                repository, None, ref, "model_registry_sensor", None, None, cursor, None, None
            )
            assert not hasattr(data, "error"), data
            return data

        first = tick()  # nothing recorded yet: every model asset
        assert len(first.run_requests) == 1 and isinstance(first.run_requests[0], RunRequest)
        assert materialize(
            [registered_models],
            selection=first.run_requests[0].asset_selection,
            instance=instance,
            resources=resources,
        ).success
        # The kept instance reads what another instance wrote since.
        settled = tick(first.cursor)
        assert not settled.run_requests and settled.skip_message
        assert "records its active version" in settled.skip_message
        unchanged = tick(settled.cursor)
        assert "unchanged" in (unchanged.skip_message or "")
    assert len(built) == 1, "one instance per process, not one per tick"
    [(kept_instance, kept)] = sensor_evaluation._kept.values()
    assert set(kept) == {"models", "ingest_policy"}
    assert isinstance(kept["models"], ModelRegistryResource)
    assert kept_instance.get_ref() == ref


def test_a_tick_outside_a_code_server_says_how_to_test_it() -> None:
    from dagster import build_sensor_context

    from farm_platform.images.sensor_evaluation import kept_resources

    with pytest.raises(RuntimeError, match="call its tick function with resources"):
        kept_resources(build_sensor_context(), ("warehouse",))
