"""external_oip cards (issue 42, part 2): a card that names a model on another Open
Inference Protocol server. The project's own server (a real `models serve` process) serves
the shipped disease_0 grader plain, under another name, version and tensor names, as
KServe or Triton would; an external card pointing at it is checked by `models add`, and a
day graded through it (the real image assets, folder bucket, DuckDB), in both inference
modes, grades as the shipped grader does on the same crops, its rows carrying the card's
id and version."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import copy_repo_models
from test_model_versions import snapshot

from farm_platform import cli, config
from farm_platform.admin.configured import configured_registry
from farm_platform.admin.model_versions import add_model
from farm_platform.ml import inference
from farm_platform.ml.registry import ModelCardError, ModelRegistry, ModelRegistryError
from farm_platform_dev.farm import grade_simulated_farm
from farm_platform_dev.processes import free_port
from farm_platform_dev.simulate import FarmConfig

pytest.importorskip("kserve")
model_server = pytest.importorskip("farm_platform_dev.model_server")

GRADER_ID = "disease_0_grader"
# The shipped grader, served plain: float32 NCHW crops in [0, 1] in, logits out.
PLAIN = f"{GRADER_ID}:v1=leafgrade:7"
SERVER = {"model": "leafgrade", "version": "7", "input": "INPUT__0", "outputs": ["OUTPUT__0"]}
CONFIG = FarmConfig(positions=4, days=1, seed=42)
CROPS = "SELECT * FROM leaf_crops ORDER BY position_id, leaf_crop_idx"
GRADES = (
    "SELECT * FROM disease_grades WHERE disease_type = 'disease_0' "
    "ORDER BY position_id, leaf_crop_idx"
)


def external_card(server: dict, version: str = "ext1", **fields) -> dict:
    """The shipped disease_0 grader's card, as an external_oip card naming `server`."""
    card = json.loads((config.REPO_ROOT / "models" / GRADER_ID / "v1" / "card.json").read_text())
    for name in ("architecture", "architecture_kwargs", "weights", "sha256"):
        del card[name]
    card.update(
        version=version,
        format="external_oip",
        server=server,
        input={},  # the shipped grader's: stretch, RGB, NCHW, 1/255, float32
        output={"form": "logits", "label_map": [0, 1, 2, 3]},
        metrics={},
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        **fields,
    )
    return card


def card_folder(root: Path, card: dict) -> Path:
    folder = root / f"{card['id']}-{card['version']}"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo_models(tmp_path_factory.mktemp("external") / "models")


@pytest.fixture(scope="module")
def server(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with model_server.ModelServerProcess(registry_dir, log, plain=(PLAIN,)) as process:
        yield process


@pytest.mark.slow
def test_a_day_graded_through_an_external_card_grades_as_the_shipped_grader(
    server, registry_dir, tmp_path, monkeypatch
):
    card = external_card({**SERVER, "url": server.grpc_url})
    folder = card_folder(tmp_path / "in", card)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        args = ["models", "--models-dir", str(registry_dir), "add", str(folder), "--activate"]
        assert cli.main(args) == 0
    # Checked on the server, evaluated there on the registered grades set, through the gate.
    out = printed.getvalue()
    assert "its server answers; contract on a probe batch: external_oip: probe batch" in out, out
    assert "disease_0_grader ext1 on eval_grades" in out, out
    assert "activated disease_0_grader ext1 (was v1)" in out, out
    assert ModelRegistry(registry_dir).grader_for("disease_0").format == "external_oip"
    for mode in ("local", "oip"):
        monkeypatch.setenv(config.FARM_INFERENCE, mode)
        monkeypatch.setenv(config.FARM_OIP_URL, server.grpc_url)
        warehouse = grade_simulated_farm(CONFIG, tmp_path / mode, models_dir=registry_dir).warehouse
        grades = warehouse.query(GRADES)
        shipped = shipped_grades(warehouse.query(CROPS))
        assert grades.height == shipped.height > 10, mode
        assert grades["predicted_grade"].to_list() == shipped["predicted_grade"].to_list(), mode
        np.testing.assert_allclose(grades["confidence"], shipped["confidence"], atol=1e-5)
        versions = grades.select("disease_model_id", "disease_model_version").unique().rows()
        assert versions == [(GRADER_ID, "ext1")], mode


def shipped_grades(crop_rows: pl.DataFrame) -> pl.DataFrame:
    """The shipped disease_0 grader, run here, on the crops the run wrote to its bucket."""
    card = configured_registry().grader_for("disease_0")
    crops = [
        inference.decode_png(Path(uri.removeprefix("file://")).read_bytes())
        for uri in crop_rows["crop_uri"]
    ]
    return inference.grade_crops(crops, crop_rows, inference.load_grader(card), card)


def _down() -> dict:
    return {**SERVER, "url": f"grpc://127.0.0.1:{free_port()}"}


CONTRACT_ERRORS = {
    "wrong-input-tensor": (lambda url: {**SERVER, "url": url, "input": "crops"}, "server.input"),
    "wrong-output-tensor": (
        lambda url: {**SERVER, "url": url, "outputs": ["logits"]},
        "server.outputs: 'logits' not among leafgrade's outputs (OUTPUT__0)",
    ),
    "missing-model": (
        lambda url: {**SERVER, "url": url, "model": "nosuch"},
        "server.model: the server has no model 'nosuch'",
    ),
    "missing-version": (
        lambda url: {**SERVER, "url": url, "version": "8"},
        "server.version: leafgrade has no version '8' there (it serves 7)",
    ),
    "server-down": (lambda url: _down(), "server.url: model server grpc://127.0.0.1:"),
}


@pytest.mark.parametrize("case", CONTRACT_ERRORS, ids=list(CONTRACT_ERRORS))
def test_a_contract_error_names_the_field_and_registers_nothing(
    case, server, registry_dir, tmp_path, capsys
):
    make, words = CONTRACT_ERRORS[case]
    folder = card_folder(tmp_path, external_card(make(server.grpc_url), version=f"bad-{case}"))
    before = snapshot(registry_dir)
    args = ["models", "--models-dir", str(registry_dir), "add", str(folder), "--activate"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    if case == "server-down":
        assert "is the server of disease_0_grader bad-server-down" in err, err
    assert snapshot(registry_dir) == before


def test_the_address_and_token_come_from_settings_the_card_names(
    server, registry_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("FARM_EXTERNAL_OIP_TEST_URL", server.http_url)
    server_fields = {**SERVER, "url_setting": "FARM_EXTERNAL_OIP_TEST_URL"}
    card = external_card(server_fields, version="ext-setting")
    added = add_model(card_folder(tmp_path, card), ModelRegistry(registry_dir))
    assert added.card.external is not None and added.card.external.url is None
    # A card is data: it may not name any other variable (it would send its value away).
    stolen = {**server_fields, "token_setting": "AWS_SECRET_ACCESS_KEY"}
    with pytest.raises(ModelCardError, match="server.token_setting"):
        add_model(card_folder(tmp_path / "b", external_card(stolen)), ModelRegistry(registry_dir))
    # The identity recorded with every grade: id + version, and a sha256 of the card's
    # server and contract (another server or tensor is another sha256).
    other = ModelRegistry(registry_dir).card(GRADER_ID, "ext-setting")
    assert other.sha256 != ModelRegistry(registry_dir).card(GRADER_ID, "v1").sha256


def test_a_server_that_goes_down_is_oip_unavailable_naming_the_card():
    from farm_platform.ml import external_oip
    from farm_platform.ml.oip import OipUnavailable
    from farm_platform.ml.registry import ModelCard

    card = ModelCard.from_json(external_card(_down()))
    # Loaded before the server went away, then a batch: the runs' OipUnavailable.
    model = external_oip.load_external(card, check=False)
    with pytest.raises(OipUnavailable, match="is the server of disease_0_grader ext1"):
        model.session(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(ModelRegistryError, match="server.url"):
        external_oip.load_external(card)


CARD_ERRORS = {
    "no-address": (dict(SERVER), "'server.url' give either url"),
    "two-addresses": (
        {**SERVER, "url": "grpc://h:1", "url_setting": "FARM_EXTERNAL_OIP_X"},
        "'server.url' give either url",
    ),
    "ftp-address": ({**SERVER, "url": "ftp://h:1"}, "'server.url' = 'ftp://h:1' must start"),
    "two-outputs-for-a-grader": (
        {**SERVER, "url": "grpc://h:1", "outputs": ["a", "b"]},
        "'server.outputs' = ['a', 'b']: output.form 'logits' reads 1 tensor",
    ),
    "numeric-version": ({**SERVER, "url": "grpc://h:1", "version": 7}, "'server.version' = 7"),
    "a-weights-file": ({**SERVER, "url": "grpc://h:1"}, "'weights' must be left out"),
}


@pytest.mark.parametrize("case", CARD_ERRORS, ids=list(CARD_ERRORS))
def test_an_external_card_field_error_names_the_field(case):
    from farm_platform.ml.registry import ModelCard

    server, words = CARD_ERRORS[case]
    extra = {"weights": "model.onnx"} if case == "a-weights-file" else {}
    with pytest.raises(ModelCardError) as caught:
        ModelCard.from_json(external_card(server, **extra))
    assert words in str(caught.value), str(caught.value)


def test_an_external_card_written_back_reads_the_same():
    from farm_platform.ml.registry import ModelCard

    card = ModelCard.from_json(external_card({**SERVER, "url": "grpc://h:1"}))
    assert ModelCard.from_json(card.to_json()) == card
    assert card.weights == "" and len(card.sha256) == 64
