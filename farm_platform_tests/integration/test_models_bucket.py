"""Models in a bucket (`FARM_MODELS_DIR=gs://…/models`), against the session's GCS emulator
(fake-gcs-server): the CLI, the weights cache, the write order and its preconditions, the
registry sensor, the model server's registry watch, and a version switch mid-day.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from models_bucket_support import (
    graded_versions,
    new_bucket,
    objects,
    record_model_assets,
    retrained_version,
)
from test_model_versions import GRADER, new_version

from farm_platform import cli
from farm_platform import config as farm_config
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.model_versions import (
    ModelExistsError,
    activate_model,
    add_model,
    list_models,
    push_models,
)
from farm_platform.config import REPO_MODELS_DIR
from farm_platform.ml import model_store
from farm_platform.ml.registry import (
    ModelChecksumError,
    ModelNotFoundError,
    ModelRegistry,
    ModelRegistryError,
)
from farm_platform_dev.stack import StackInfo


@pytest.fixture(scope="module")
def pushed_models(local_stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repository's models pushed once, the way docs/models.md says, into a bucket of their own
    (not the farm bucket: no drone_image notifications); each test gets a copy."""
    url = f"gs://{new_bucket(local_stack)}/models"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(farm_config.STORAGE_EMULATOR_HOST, local_stack.storage_host)
        env.setenv(farm_config.FARM_MODELS_CACHE, str(tmp_path_factory.mktemp("push-cache")))
        push_models(REPO_MODELS_DIR, ModelRegistry(url))
    return url


@pytest.fixture()
def models_url(bucket_env: StackInfo, pushed_models: str) -> str:
    """A fresh bucket holding what `models push` put in `pushed_models`."""
    url = f"gs://{new_bucket(bucket_env)}/models"
    fs = model_store.BucketModelStore(pushed_models).fs
    fs.copy(pushed_models.removeprefix("gs://"), url.removeprefix("gs://"), recursive=True)
    return url


def test_push_list_add_activate_through_the_cli(models_url, tmp_path, capsys):
    local = ModelRegistry(REPO_MODELS_DIR)
    remote = ModelRegistry(models_url)
    assert remote.in_bucket and remote.models_dir == models_url
    assert remote.active_versions() == local.active_versions()
    assert remote.model_versions() == local.model_versions()
    assert cli.main(["models", "--models-dir", models_url, "list"]) == 0
    listed = capsys.readouterr().out
    assert "* disease_3_grader   v1" in listed and "WARNING" not in listed

    # Pushing again uploads nothing and leaves every object (registry included) as it was.
    before = objects(models_url)
    assert cli.main(["models", "--models-dir", models_url, "push", str(REPO_MODELS_DIR)]) == 0
    assert "already there: disease_3_grader v1" in capsys.readouterr().out
    assert objects(models_url) == before

    folder = new_version(REPO_MODELS_DIR, tmp_path)
    args = ["models", "--models-dir", models_url, "add", str(folder), "--activate"]
    assert cli.main(args) == 0
    assert f"registered {GRADER} v2 at {models_url}/{GRADER}/v2" in capsys.readouterr().out
    after = objects(models_url)
    # Weights, then the card, then the registry: nothing points at what is not there yet.
    weights, card = after[f"{GRADER}/v2/weights.pt"], after[f"{GRADER}/v2/card.json"]
    assert int(weights) < int(card) < int(after["registry.json"])
    assert remote.active_versions()[GRADER] == "v2"
    assert local.active_versions()[GRADER] == "v1"  # the checkout is untouched

    assert cli.main(["models", "--models-dir", models_url, "activate", GRADER, "v1"]) == 0
    assert remote.active_versions()[GRADER] == "v1"
    # FARM_MODELS_DIR names the bucket for every command, as for a folder.
    with pytest.MonkeyPatch.context() as env:
        env.setenv(farm_config.FARM_MODELS_DIR, models_url + "/")
        assert configured_registry().models_dir == models_url
        assert activate_model(GRADER, "v2") == "v1"
    assert {(r.model_id, r.version): r.active for r in list_models(remote)}[GRADER, "v2"]


def test_weights_are_downloaded_once_into_a_cache_keyed_by_sha256(models_url, tmp_path):
    # A process that has not seen these weights yet.
    cache = tmp_path / "fresh"
    remote = ModelRegistry(models_url, cache_dir=cache)
    card = remote.grader_for("disease_1")
    downloads = len(model_store.DOWNLOADS)
    path = remote.verify_weights(card)
    assert path == cache / card.sha256 / "weights.pt"
    assert (
        path.read_bytes() == (REPO_MODELS_DIR / card.id / card.version / "weights.pt").read_bytes()
    )
    # Another registry object in the same process (a run loads each model per asset),
    # the active cards, and the model itself: no second download.
    ModelRegistry(models_url, cache_dir=cache).verify_weights(card)
    inference = pytest.importorskip("farm_platform.ml.inference")
    inference.load_grader(card, remote)
    assert model_store.DOWNLOADS[downloads:] == [f"{models_url}/{card.id}/v1/weights.pt"]

    # A damaged cached copy is not used: the weights are checked and fetched again.
    path.write_bytes(b"not the weights")
    assert remote.verify_weights(card) == path
    assert len(model_store.DOWNLOADS) == downloads + 2
    assert remote.card(card.id, card.version).sha256 == card.sha256


def test_corrupt_weights_in_the_bucket_are_refused_and_not_cached(models_url, tmp_path):
    remote = ModelRegistry(models_url)
    add_model(retrained_version(tmp_path), remote)
    store = remote.store
    key = f"{GRADER}/v2/weights.pt"
    good = store.read_bytes(key)
    store.fs.pipe_file(f"{store.path}/{key}", good[:-1] + bytes([good[-1] ^ 1]))
    card = remote.card(GRADER, "v2")
    before = objects(models_url)
    with pytest.raises(ModelChecksumError) as refused:
        remote.verify_weights(card)
    message = str(refused.value)
    assert f"{models_url}/{key}" in message and f"expected sha256 {card.sha256}" in message
    assert not (tmp_path / "cache" / card.sha256 / "weights.pt").exists()
    # It cannot be activated, and the registry is not rewritten.
    with pytest.raises(ModelChecksumError):
        activate_model(GRADER, "v2", remote)
    assert remote.active_versions()[GRADER] == "v1"
    assert objects(models_url) == before
    assert cli.main(["models", "--models-dir", models_url, "list"]) == 0  # v2 is not active


def test_a_refused_upload_changes_nothing_in_the_bucket(models_url, tmp_path):
    folder = new_version(REPO_MODELS_DIR, tmp_path)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    before = objects(models_url)
    with pytest.raises(ModelChecksumError):
        add_model(folder, ModelRegistry(models_url), activate=True)
    assert objects(models_url) == before
    with pytest.raises(ModelExistsError, match="already registered"):
        add_model(new_version(REPO_MODELS_DIR, tmp_path, version="v1"), ModelRegistry(models_url))
    assert objects(models_url) == before


def test_an_interrupted_upload_is_invisible_and_can_be_retried(models_url, tmp_path):
    """An upload cut off after the weights leaves no card: no version to list or activate."""
    remote = ModelRegistry(models_url)
    folder = new_version(REPO_MODELS_DIR, tmp_path)
    remote.store.put_file(folder / "weights.pt", f"{GRADER}/v2/weights.pt")
    assert remote.versions(GRADER) == ["v1"]
    with pytest.raises(ModelNotFoundError, match="no model card for disease_3_grader v2"):
        activate_model(GRADER, "v2", remote)
    add_model(folder, remote, activate=True)  # the retry completes it
    assert remote.versions(GRADER) == ["v1", "v2"]
    assert remote.active_versions()[GRADER] == "v2"


def test_registry_writes_only_over_the_generation_they_read(models_url, tmp_path):
    remote = ModelRegistry(models_url)
    add_model(new_version(REPO_MODELS_DIR, tmp_path), remote)
    data, generation = remote._read_registry_generation()
    # Another writer activates something between our read and our write.
    ModelRegistry(models_url).set_active(GRADER, "v2")
    with pytest.raises(model_store.RegistryConflict):
        remote.store.write_json("registry.json", data, if_generation=generation)
    with pytest.raises(model_store.RegistryConflict):  # "0": only where there is none
        remote.store.write_json("registry.json", data, if_generation="0")
    assert remote.active_versions()[GRADER] == "v2"  # the other writer's change stands
    # The registry's own writes read again and apply their change on top.
    remote.set_active("leaf_detector", "v1")
    assert remote.active_versions()[GRADER] == "v2"
    assert remote.active_versions()["leaf_detector"] == "v1"
    # A registry that is not whole JSON is refused, never half-used.
    remote.store.fs.pipe_file(f"{remote.store.path}/registry.json", b'{"active": {"leaf_')
    with pytest.raises(ModelRegistryError, match="registry.json is not valid JSON"):
        remote.active_versions()


def test_the_registry_sensor_watches_the_registry_object_generation(models_url, tmp_path):
    from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

    from farm_platform.images.keys import MODEL_ASSETS
    from farm_platform.images.registered_models import MODEL_VERSIONS
    from farm_platform.images.sensors import model_registry_tick
    from farm_platform.resources import ModelRegistryResource, WarehouseResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource

    models = ModelRegistryResource(models_dir=models_url)
    resources = {
        "models": models,
        "warehouse": WarehouseResource(url=f"duckdb:///{tmp_path / 'farm.duckdb'}"),
    }
    cursor: list[str | None] = [None]

    def tick(instance: DagsterInstance) -> RunRequest | SkipReason:
        context = build_sensor_context(instance=instance, cursor=cursor[0])
        result = model_registry_tick(context, models, IngestPolicyResource())
        cursor[0] = context.cursor
        return result

    with DagsterInstance.ephemeral() as instance:
        first = tick(instance)
        assert isinstance(first, RunRequest)
        assert set(first.asset_selection) == {*MODEL_ASSETS.values(), MODEL_VERSIONS}
        record_model_assets(instance, first.asset_selection, resources)
        generation = ModelRegistry(models_url).generation()
        settled = tick(instance)
        assert isinstance(settled, SkipReason) and "records its active version" in str(
            settled.skip_message
        )
        idle = tick(instance)  # same generation: not even read
        assert isinstance(idle, SkipReason)
        assert f"generation {generation} unchanged" in str(idle.skip_message)

        add_model(new_version(REPO_MODELS_DIR, tmp_path), ModelRegistry(models_url), True)
        to_v2 = tick(instance)
        assert isinstance(to_v2, RunRequest)
        assert set(to_v2.asset_selection) == {MODEL_ASSETS[GRADER], MODEL_VERSIONS}
        assert "v1->v2" in to_v2.run_key
        # Until the run records v2, each tick asks again (a failed run is not forgotten).
        again = tick(instance)
        assert isinstance(again, RunRequest) and again.run_key == to_v2.run_key


def test_the_model_server_follows_the_bucket_and_keeps_serving_through_a_bad_upload(
    models_url, tmp_path
):
    pytest.importorskip("kserve")
    from farm_platform.ml import serving

    remote = ModelRegistry(models_url)
    repository = serving.RegistryRepository(remote)
    for model in serving.registry_models(remote):
        repository.update(model)
    watch = serving.RegistryWatch(repository, interval_seconds=60)
    grader = repository.get_model(GRADER)
    assert grader.card.version == "v1"

    # v2 uploaded with weights that are not its card's (a corrupt upload), then made the
    # active version by hand, around every check (as `gcloud storage cp` would).
    folder = retrained_version(tmp_path)
    store = remote.store
    good = (folder / "weights.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    store.put_file(bad, f"{GRADER}/v2/weights.pt")
    store.put_file(folder / "card.json", f"{GRADER}/v2/card.json", create_only=True)
    data = json.loads(store.read_bytes("registry.json"))
    data["active"][GRADER] = "v2"
    store.write_json("registry.json", data)
    watch.check()
    assert grader.card.version == "v1"  # the old version keeps serving

    store.put_file(folder / "weights.pt", f"{GRADER}/v2/weights.pt")  # the upload, repaired
    watch.check()
    assert grader.card.version == "v2"  # no restart
    assert repository.get_model("leaf_detector").card.version == remote.detector().version


@pytest.mark.slow
def test_a_version_switch_while_a_day_is_graded(models_url, tmp_path, monkeypatch):
    """The run grades its whole day with the versions it took at its start; the registry
    sensor then marks the day stale, and the day's next run (the backfill) grades with the
    new version, beside the old rows."""
    from dagster import DagsterInstance, build_sensor_context

    from farm_platform.admin.model_versions import stale_partitions, stale_summary
    from farm_platform.images.sensors import model_registry_tick
    from farm_platform.resources import BucketResource
    from farm_platform.resources.ingest_policy import IngestPolicyResource
    from farm_platform_dev.farm import farm_resources, materialize_day
    from farm_platform_dev.simulate import FarmConfig, write_farm

    config = FarmConfig(positions=3, days=1, seed=8)
    bucket_url = f"file://{tmp_path / 'bucket'}"
    write_farm(config, bucket_url, tmp_path / "positions.csv", truth_url=str(tmp_path / "t"))
    resources = farm_resources(bucket_url, f"duckdb:///{tmp_path / 'farm.duckdb'}", models_url)
    day = config.dates[0].isoformat()
    positions = [f"P{i:03d}" for i in range(3)]
    remote = ModelRegistry(models_url)
    add_model(retrained_version(tmp_path), remote)
    resources["ingest_policy"] = IngestPolicyResource(run_chunk_photos=1)  # three chunks

    reads = []
    real_read_many = BucketResource.read_many

    def switch_after_the_first_chunk(self: Any, uris: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(uris)
        if len(reads) == 2:  # the run has its models and is on its first photo
            activate_model(GRADER, "v2", ModelRegistry(models_url))
        return real_read_many(self, uris, *args, **kwargs)

    def registry_sensor_run(instance: DagsterInstance) -> None:
        """What the daemon does: the sensor's tick, then the run it asks for."""
        context = build_sensor_context(instance=instance)
        request = model_registry_tick(context, resources["models"], resources["ingest_policy"])
        record_model_assets(instance, request.asset_selection, resources)

    with DagsterInstance.ephemeral() as instance:
        registry_sensor_run(instance)
        monkeypatch.setattr(BucketResource, "read_many", switch_after_the_first_chunk)
        assert materialize_day(resources, day, positions, instance)
        assert len(reads) == 3 and remote.active_versions()[GRADER] == "v2"
        during = graded_versions(resources, "disease_3")
        assert [version for _, version in during] == ["v1"]  # one run, one version: no mix

        registry_sensor_run(instance)  # sees the bucket registry's new generation
        assert {k: n for k, n in stale_summary(stale_partitions(instance)).items() if n} == {
            "disease_3_grades": 1
        }
        monkeypatch.setattr(BucketResource, "read_many", real_read_many)
        assert materialize_day(resources, day, instance=instance)  # the backfill of the day
        assert not any(stale_partitions(instance).values())
    after = graded_versions(resources, "disease_3")
    assert [version for _, version in after] == ["v1", "v2"]
    grades = resources["warehouse"].query(
        "SELECT disease_model_version, count(*) AS n FROM disease_grades"
        " WHERE disease_type = 'disease_3' GROUP BY 1 ORDER BY 1"
    )
    assert grades["n"].to_list()[0] == grades["n"].to_list()[1] > 0  # every leaf, both
    others = resources["warehouse"].query(
        "SELECT DISTINCT disease_model_version FROM disease_grades"
        " WHERE disease_type <> 'disease_3'"
    )
    assert others["disease_model_version"].to_list() == ["v1"]


@pytest.mark.slow
def test_a_served_model_switches_to_the_buckets_new_version_without_a_restart(models_url, tmp_path):
    """`farm-platform models serve --models-dir gs://…` for real, one process throughout: its
    registry watch loads each version activated in the bucket (the corrupt-upload case is
    the in-process test above)."""
    pytest.importorskip("kserve")
    import numpy as np

    from farm_platform.ml import oip, oip_runners
    from farm_platform_dev.model_server import ModelServerProcess

    remote = ModelRegistry(models_url)
    add_model(retrained_version(tmp_path), remote)
    crops = {"crops": np.zeros((1, 48, 48, 3), np.uint8)}

    def served_version() -> str:
        reported, _ = client.infer(GRADER, crops, oip_runners.GRADER_OUTPUTS)
        return reported.version

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while served_version() != version and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served_version() == version

    with ModelServerProcess(models_url, tmp_path / "server.log", watch_seconds=1) as server:
        client = oip.OipClient(server.grpc_url)
        assert served_version() == "v1"
        activate_model(GRADER, "v2", remote)
        wait_for("v2")
        activate_model(GRADER, "v1", remote)
        wait_for("v1")
    log = (tmp_path / "server.log").read_text()
    assert f"registry watch: {GRADER} v1 -> v2" in log and f"{GRADER} v2 -> v1" in log
