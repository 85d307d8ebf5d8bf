"""Grading one day's photos in chunks: read → decode → detect → crop → grade → write.

Memory stays flat as a run's photo count grows: photos go through in chunks of
`chunk_photos`. The next chunk is read and decoded in a thread while this one runs through
the models, and each chunk's crop objects and warehouse rows are written in a second
thread (crop objects first, then the chunk's rows of every table in one transaction), at
most two chunks behind. What the checks need (rows, not pixels) is kept for the day.
No Dagster here: `images/pipeline.py` wraps it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from farm_platform.grading.photos import Photo, decode_photos, drone_image_rows
from farm_platform.layout import ImageKey
from farm_platform.ml.settings import InferenceSettings
from farm_platform.resources.bucket import BucketResource
from farm_platform.resources.tables import (
    DISEASE_GRADES_TABLE,
    DRONE_IMAGES_TABLE,
    LEAF_CROPS_TABLE,
)
from farm_platform.resources.warehouse import WarehouseResource

STAGES = ("read", "decode", "detect_crop", "grade", "crop_write", "warehouse_write", "checks")


@dataclass
class StageClock:
    """Seconds spent per stage; the background stages overlap the foreground ones."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] += time.perf_counter() - started


@dataclass(frozen=True)
class GradingPlan:
    """What a run computes for one day: which tables, with which models."""

    date: dt.date
    positions: tuple[str, ...]
    record_images: bool  # drone_images selected
    detect: bool  # leaf_crops selected (else grades re-cut the stored crops)
    detector_card: Any
    grader_cards: tuple[Any, ...]  # one per selected grade asset
    run_id: str
    chunk_photos: int
    inference: InferenceSettings  # where and how the models run (the inference resource)


@dataclass
class DayResult:
    """The day's rows as written, for the checks and the materialization metadata."""

    photos: list[Photo] = field(default_factory=list)  # without pixels
    images: list[pl.DataFrame] = field(default_factory=list)
    crops: list[pl.DataFrame] = field(default_factory=list)  # written or re-cut
    grades: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: defaultdict(list))
    written_crop_uris: set[str] = field(default_factory=set)
    clock: StageClock = field(default_factory=StageClock)
    # Photos whose rows are committed: if the run then fails, they stand (and are replaced
    # when the photos are graded again).
    committed_photos: int = 0

    def image_rows(self) -> pl.DataFrame:
        return _concat(self.images, DRONE_IMAGES_TABLE.polars_schema)

    def crop_rows(self) -> pl.DataFrame:
        return _concat(self.crops, LEAF_CROPS_TABLE.polars_schema)

    def grade_rows(self, disease: str) -> pl.DataFrame:
        return _concat(self.grades.get(disease, []), DISEASE_GRADES_TABLE.polars_schema)

    @property
    def unreadable(self) -> dict[ImageKey, str]:
        return {photo.key: photo.error for photo in self.photos if photo.error}

    @property
    def readable_keys(self) -> list[ImageKey]:
        return [photo.key for photo in self.photos if photo.error is None]


def grade_day(
    plan: GradingPlan,
    bucket: BucketResource,
    warehouse: WarehouseResource,
    registry: Any,
    announcements: dict[str, Any],
    result: DayResult | None = None,
) -> DayResult:
    """Process `plan.positions`' photos of `plan.date` into `result`; every chunk's rows
    are committed before this returns (or it raises: `result.committed_photos` then says
    how many were committed before the failure)."""
    from farm_platform.ml import inference

    result = result if result is not None else DayResult()
    inference.use_threads(plan.inference.threads)
    detector, graders = _models(plan, registry)
    keys = [ImageKey(position, plan.date) for position in plan.positions]
    chunks = [keys[i : i + plan.chunk_photos] for i in range(0, len(keys), plan.chunk_photos)]
    graded_at = dt.datetime.now(dt.UTC)

    def load(chunk: list[ImageKey]) -> list[Photo]:
        started = time.perf_counter()
        uris = [bucket.image_uri(key) for key in chunk]
        payloads = bucket.read_many(uris)
        result.clock.add("read", started)
        started = time.perf_counter()
        photos = decode_photos(chunk, uris, payloads, inference)
        result.clock.add("decode", started)
        return photos

    def write(photos: int, crop_rows: pl.DataFrame, crops: list[Any], writes: list[Any]) -> None:
        if plan.detect:  # else the crops are the stored ones, re-cut
            started = time.perf_counter()
            inference.write_crops(crop_rows, crops, bucket.filesystem)
            result.clock.add("crop_write", started)
        started = time.perf_counter()
        warehouse.replace_many(writes)
        result.committed_photos += photos
        result.clock.add("warehouse_write", started)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        next_chunk: Future | None = reader.submit(load, chunks[0]) if chunks else None
        in_flight: list[Future] = []
        for index in range(len(chunks)):
            photos = next_chunk.result()
            next_chunk = reader.submit(load, chunks[index + 1]) if index + 1 < len(chunks) else None
            writes, crop_rows, crops = _grade_chunk(
                plan,
                photos,
                detector,
                graders,
                bucket.root,
                warehouse,
                announcements,
                graded_at,
                result,
            )
            result.photos.extend(_without_pixels(photo) for photo in photos)
            # At most two chunks of crops wait for the writer: memory stays flat.
            while len(in_flight) >= 2:
                in_flight.pop(0).result()
            in_flight.append(writer.submit(write, len(photos), crop_rows, crops, writes))
            if plan.detect:
                result.written_crop_uris.update(crop_rows["crop_uri"].to_list())
        for future in in_flight:
            future.result()
    return result


def _models(plan: GradingPlan, registry: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """The run's detector and graders: loaded here, or on the model server (FARM_INFERENCE);
    an external_oip card's model runs on the server its card names, in either mode."""
    from farm_platform.ml import inference, oip_runners

    settings = plan.inference
    cards = ([plan.detector_card] if plan.detect else []) + list(plan.grader_cards)
    client = None
    if settings.mode == "oip":
        from farm_platform.ml import oip

        client = oip.OipClient.from_settings(settings)
        # Before any photo: an unreachable server or another active version fails the run
        # now, with nothing written (its photos are requeued and retried).
        oip_runners.check_versions(client, [card for card in cards if card.external is None])

    def load(card: Any) -> Any:
        detector = card.task == "leaf_detector"
        if client is None or card.external is not None:
            # In this process (an external card: loading asks its server, which runs it).
            if detector:
                return inference.load_detector(card, registry, settings=settings)
            return inference.load_grader(card, registry, settings=settings)
        if detector:
            return oip_runners.remote_detector(client, card)
        return oip_runners.remote_grader(client, card)

    detector = load(plan.detector_card) if plan.detect else None
    return detector, [(card, load(card)) for card in plan.grader_cards]


def _grade_chunk(
    plan: GradingPlan,
    photos: list[Photo],
    detector: Any,
    graders: list[tuple[Any, Any]],
    bucket_root: str,
    warehouse: WarehouseResource,
    announcements: dict[str, Any],
    graded_at: dt.datetime,
    result: DayResult,
) -> tuple[list[tuple[str, pl.DataFrame, pl.DataFrame | None]], pl.DataFrame, list[Any]]:
    from farm_platform.ml import inference

    writes: list[tuple[str, pl.DataFrame, pl.DataFrame | None]] = []
    if plan.record_images:
        images = drone_image_rows(photos, announcements, graded_at, plan.run_id)
        writes.append(("drone_images", images, None))
        result.images.append(images)
    readable = [(photo.key, photo.array) for photo in photos if photo.array is not None]
    scopes = _scopes([key for key, _ in readable], plan.detector_card)

    started = time.perf_counter()
    if plan.detect:
        crop_rows, crops = inference.crop_leaves(
            readable, detector, plan.detector_card, bucket_root
        )
        writes.append(("leaf_crops", crop_rows, scopes))
    else:
        crop_rows, crops = _stored_crops(warehouse, readable, plan.detector_card)
    result.crops.append(crop_rows)
    result.clock.add("detect_crop", started)

    started = time.perf_counter()
    prepared: dict[tuple[Any, ...], Any] = {}
    for card, grader in graders:
        size = (card.input_size[0], card.input_size[1])
        resizing = inference.crop_resizing(grader)
        if (size, *resizing) not in prepared:
            # Resize once for every grader that shares an input size and resizing.
            prepared[(size, *resizing)] = inference.prepare_crops(
                crops, size, *inference.model_placement(grader), *resizing
            )
        inputs = prepared[(size, *resizing)]
        grades = inference.grade_crops(inputs, crop_rows, grader, card).with_columns(
            graded_at=pl.lit(graded_at, dtype=pl.Datetime("us", "UTC")),
            dagster_run_id=pl.lit(plan.run_id),
        )
        writes.append(
            (
                "disease_grades",
                grades,
                scopes.with_columns(
                    disease_type=pl.lit(card.disease_type),
                    disease_model_id=pl.lit(card.id),
                    disease_model_version=pl.lit(card.version),
                ),
            )
        )
        result.grades[card.disease_type].append(grades)
    result.clock.add("grade", started)
    return writes, crop_rows, crops


def _without_pixels(photo: Photo) -> Photo:
    return Photo(
        photo.key, photo.uri, photo.size_bytes, photo.sha256, photo.exists, None, photo.error
    )


def _stored_crops(
    warehouse: WarehouseResource, readable: Sequence[tuple[ImageKey, Any]], detector_card: Any
) -> tuple[pl.DataFrame, list[Any]]:
    """Crops of the active detector's stored boxes, cut again from the decoded photos."""
    from farm_platform.ml import inference

    empty = pl.DataFrame(schema=LEAF_CROPS_TABLE.polars_schema)
    if not readable:
        return empty, []
    positions = [key.position_id for key, _ in readable]
    stored = warehouse.query(
        "SELECT * FROM leaf_crops WHERE cropper_model_id = %s AND cropper_model_version = %s"
        f" AND date = %s AND position_id IN ({', '.join(['%s'] * len(positions))})",
        [detector_card.id, detector_card.version, readable[0][0].date, *positions],
    )
    if stored.is_empty():
        return empty, []
    rows = stored.cast(LEAF_CROPS_TABLE.polars_schema).sort("position_id", "leaf_crop_idx")
    arrays = {key.position_id: array for key, array in readable}
    crops = [
        inference.cut_crop(arrays[position], box)
        for position, box in zip(
            rows["position_id"], rows.select("x0", "y0", "x1", "y1").rows(), strict=True
        )
    ]
    return rows, crops


def _scopes(keys: Sequence[ImageKey], detector_card: Any) -> pl.DataFrame:
    """The (photo, cropper) scopes whose leaf_crops and disease_grades rows a chunk replaces."""
    return pl.DataFrame(
        {
            "position_id": [key.position_id for key in keys],
            "date": [key.date for key in keys],
            "cropper_model_id": [detector_card.id] * len(keys),
            "cropper_model_version": [detector_card.version] * len(keys),
        },
        schema={
            "position_id": pl.String(),
            "date": pl.Date(),
            "cropper_model_id": pl.String(),
            "cropper_model_version": pl.String(),
        },
    )


def _concat(frames: list[pl.DataFrame], schema: dict[str, Any] | None = None) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema=schema) if schema else pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed")
