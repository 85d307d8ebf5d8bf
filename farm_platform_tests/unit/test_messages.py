"""Message classification: both forms of docs/contracts.md, every reason to dead-letter."""

import datetime as dt
import json

import pytest

from farm_platform.ingest.messages import (
    Ignored,
    ImageArrival,
    Rejected,
    TrialFacts,
    parse_message,
)
from farm_platform.layout import ImageKey

BUCKET = "gs://farm-images"
KNOWN = {"P000", "P001"}
DATES = (dt.date(2026, 1, 1), dt.date(2026, 11, 25))
TRIAL = TrialFacts(KNOWN, DATES, "UTC", "/farm/positions.csv")


def parse(data: bytes = b"", **attributes: str):
    return parse_message(data, attributes, BUCKET, TRIAL)


def drone(**payload) -> bytes:
    return json.dumps(payload).encode()


def notification(object_id: str, event_type: str = "OBJECT_FINALIZE", bucket: str = "farm-images"):
    return parse(
        b"{}",
        eventType=event_type,
        bucketId=bucket,
        objectId=object_id,
        payloadFormat="JSON_API_V1",
        objectGeneration="1700000000000001",
    )


def test_drone_controller_message_becomes_an_arrival():
    parsed = parse(
        drone(
            image_uri="gs://farm-images/P001/2026-06-02/image.png",
            position_id="P001",
            date="2026-06-02",
            captured_at="2026-06-02T09:15:00+00:00",
            drone_id="drone-7",
        )
    )
    assert parsed == ImageArrival(
        ImageKey("P001", dt.date(2026, 6, 2)),
        "gs://farm-images/P001/2026-06-02/image.png",
        None,
        "drone_controller",
    )


def test_storage_notification_becomes_an_arrival_with_its_generation():
    parsed = notification("P000/2026-06-01/image.png")
    assert isinstance(parsed, ImageArrival)
    assert parsed.key == ImageKey("P000", dt.date(2026, 6, 1))
    assert parsed.generation == "1700000000000001"
    assert parsed.form == "gcs_notification"


@pytest.mark.parametrize(
    "object_id, bucket, event_type",
    [
        ("P000/2026-06-01/leaf_detector/v1/3.png", "farm-images", "OBJECT_FINALIZE"),
        ("ground_truth/leaves.parquet", "farm-images", "OBJECT_FINALIZE"),
        ("P000/2026-06-01/image.png", "farm-images", "OBJECT_DELETE"),
        ("P000/2026-06-01/image.png", "another-bucket", "OBJECT_FINALIZE"),
    ],
)
def test_notifications_that_ask_for_no_work_are_ignored(object_id, bucket, event_type):
    assert isinstance(notification(object_id, event_type, bucket), Ignored)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x89PNG not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (drone(position_id="P000"), "no image_uri"),
        (drone(image_uri="gs://farm-images/P000/image.png"), "outside the layout"),
        (drone(image_uri="gs://elsewhere/P000/2026-06-01/image.png"), "outside the farm bucket"),
        (drone(image_uri="gs://farm-images/P000/2026-13-01/image.png"), "bad date"),
        (drone(image_uri="gs://farm-images/P000/01-06-2026/image.png"), "bad date"),
        (drone(image_uri="gs://farm-images/P000/2025-06-01/image.png"), "outside the trial"),
        (drone(image_uri="gs://farm-images/P999/2026-06-01/image.png"), "unknown position"),
        (
            drone(image_uri="gs://farm-images/P000/2026-06-01/image.png", position_id="P001"),
            "position_id 'P001' disagrees",
        ),
        (
            drone(image_uri="gs://farm-images/P000/2026-06-01/image.png", date="2026-06-02"),
            "date '2026-06-02' disagrees",
        ),
        (
            drone(image_uri="gs://farm-images/P000/2026-06-01/image.png", captured_at="noon"),
            "bad captured_at",
        ),
        *[
            (
                drone(image_uri="gs://farm-images/P000/2026-06-01/image.png", captured_at=at),
                "not on the path's date 2026-06-01",
            )
            for at in ("2026-06-02T09:15:00+00:00", "2099-06-01T09:00:00Z", "1900-06-01T09:00")
        ],
    ],
)
def test_invalid_drone_messages_are_rejected_with_the_reason(data, reason):
    parsed = parse(data)
    assert isinstance(parsed, Rejected)
    assert reason in parsed.error


def test_notification_for_unknown_position_is_rejected_not_ignored():
    parsed = notification("P404/2026-06-01/image.png")
    assert isinstance(parsed, Rejected)
    assert "unknown position 'P404'" in parsed.error
    assert "positions.csv" in parsed.error  # says what to do


POISON = {
    "JSON nested 20,000 deep": (b"[" * 20_000 + b"]" * 20_000, "nested too deep"),
    "an integer of 5,000 digits": (b'{"image_uri": ' + b"7" * 5000 + b"}", "unusable JSON"),
    "a message over 64 KiB": (b'{"image_uri": "' + b"x" * 70_000 + b'"}', "bytes, over"),
    "invalid UTF-8": (b'{"image_uri": "\xff\xfe"}', "not JSON"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_poison_drone_messages_are_rejected_with_a_reason(case):
    data, reason = POISON[case]
    parsed = parse(data)
    assert isinstance(parsed, Rejected) and reason in parsed.error, parsed


@pytest.mark.parametrize("generation", ["²", "12a", "", "1" * 21, "-5"])
def test_a_generation_that_is_not_ascii_digits_is_rejected(generation):
    parsed = parse(
        b"{}",
        eventType="OBJECT_FINALIZE",
        bucketId="farm-images",
        objectId="P000/2026-06-02/image.png",
        objectGeneration=generation,
    )
    assert isinstance(parsed, Rejected) and "bad objectGeneration" in parsed.error


def test_a_drone_message_with_a_stray_bucket_id_attribute_is_still_a_drone_message():
    uri = "gs://farm-images/P000/2026-06-02/image.png"
    parsed = parse(drone(image_uri=uri), bucketId="farm-images")
    assert isinstance(parsed, ImageArrival) and parsed.form == "drone_controller"
    bad = parse(b"not json", bucketId="farm-images")
    assert isinstance(bad, Rejected) and "not JSON" in bad.error


def test_the_error_attribute_is_cut_in_bytes_not_characters():
    from farm_platform.resources.pubsub import cut_to_bytes

    error = "é" * 1000  # 2,000 bytes in UTF-8
    cut = cut_to_bytes(error, 1024)
    assert len(cut.encode()) <= 1024 and cut == "é" * 512
    assert cut_to_bytes("short", 1024) == "short"


def test_a_farm_east_of_utc_dates_its_photos_by_its_own_calendar():
    """Brisbane (UTC+10) at 07:00 local on 2026-11-26 is 21:00 UTC on 2026-11-25: the
    photo's path date is the farm's day, which is a valid partition on the farm's clock."""
    from farm_platform.partitions import TrialCalendar

    uri = "gs://farm-images/P000/2026-11-26/image.png"
    captured = "2026-11-25T21:00:00+00:00"
    farm_today = dt.date(2026, 11, 26)  # while UTC is still on the 25th
    brisbane = TrialCalendar(DATES[0], "Australia/Brisbane")
    assert brisbane.valid_dates(farm_today) == (DATES[0], farm_today)
    facts = TrialFacts(KNOWN, brisbane.valid_dates(farm_today), brisbane.timezone, "map")
    accepted = parse_message(drone(image_uri=uri, captured_at=captured), {}, BUCKET, facts)
    assert isinstance(accepted, ImageArrival), accepted
    # The same instant read on UTC's calendar is the day before the path's.
    utc = TrialFacts(KNOWN, brisbane.valid_dates(farm_today), "UTC", "map")
    rejected = parse_message(drone(image_uri=uri, captured_at=captured), {}, BUCKET, utc)
    assert isinstance(rejected, Rejected) and "on 2026-11-25 in the trial's time zone UTC" in (
        rejected.error
    )


def test_a_trial_time_zone_that_does_not_exist_is_named(monkeypatch):
    from farm_platform.config import ConfigError
    from farm_platform.resources.trial_calendar import TrialCalendarResource

    monkeypatch.setenv("FARM_TRIAL_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="FARM_TRIAL_TIMEZONE='Mars/Olympus' is not an IANA"):
        TrialCalendarResource.from_environment().calendar()
