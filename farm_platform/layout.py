"""The bucket: its layout contract (docs/contracts.md, "Bucket layout") and how to reach it.

raw image:  {FARM_BUCKET}/{position_id}/{date}/image.png
leaf crop:  {FARM_BUCKET}/{position_id}/{date}/{cropper_model_id}/{cropper_model_version}/{idx}.png
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

RAW_IMAGE_NAME = "image.png"
# The error of a photo whose object is gone (drone_images.error, dead letters, the gate).
MISSING_OBJECT_ERROR = "object does not exist in the bucket"
DATE_FORMAT = "%Y-%m-%d"
# Position ids become path segments and Dagster partition keys, so keep them to a
# conservative alphabet (no '/', '|' or ',' which Dagster uses as separators).
POSITION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LayoutError(ValueError):
    """A path or value that does not follow the bucket layout contract."""


@dataclass(frozen=True, order=True)
class ImageKey:
    """One drone photo: a position on a day."""

    position_id: str
    date: dt.date

    @property
    def date_str(self) -> str:
        return self.date.strftime(DATE_FORMAT)

    def relative_path(self) -> str:
        return f"{self.position_id}/{self.date_str}/{RAW_IMAGE_NAME}"


def parse_date(value: str) -> dt.date:
    """Parse a `YYYY-MM-DD` date, with an error that says what was expected."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value or ""):
        raise LayoutError(f"bad date {value!r}: expected YYYY-MM-DD")
    try:
        return dt.datetime.strptime(value, DATE_FORMAT).date()
    except ValueError as exc:
        raise LayoutError(f"bad date {value!r}: {exc}") from None


def check_position_id(position_id: str) -> str:
    if not POSITION_ID_PATTERN.match(position_id or ""):
        raise LayoutError(
            f"bad position_id {position_id!r}: expected letters, digits, '_', '.' or '-' "
            "(at most 64 characters)"
        )
    return position_id


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def raw_image_uri(bucket_root: str, key: ImageKey) -> str:
    return join(bucket_root, key.relative_path())


def crop_uri(
    bucket_root: str,
    key: ImageKey,
    cropper_model_id: str,
    cropper_model_version: str,
    leaf_crop_idx: int,
) -> str:
    return join(
        bucket_root,
        key.position_id,
        key.date_str,
        cropper_model_id,
        cropper_model_version,
        f"{leaf_crop_idx}.png",
    )


def is_raw_image_path(relative_path: str) -> bool:
    """True for any object named like a raw image, whether or not the rest is valid."""
    return relative_path.rsplit("/", 1)[-1] == RAW_IMAGE_NAME


def parse_raw_image_path(relative_path: str) -> ImageKey:
    """Turn `P/YYYY-MM-DD/image.png` (relative to the bucket root) into an ImageKey."""
    parts = relative_path.strip("/").split("/")
    if len(parts) != 3 or parts[2] != RAW_IMAGE_NAME:
        raise LayoutError(
            f"path {relative_path!r} is outside the layout: expected "
            f"<position_id>/<YYYY-MM-DD>/{RAW_IMAGE_NAME}"
        )
    return ImageKey(check_position_id(parts[0]), parse_date(parts[1]))


def split_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/a/b` -> (`bucket`, `a/b`)."""
    match = re.fullmatch(r"gs://([^/]+)/(.*)", uri or "")
    if not match:
        raise LayoutError(f"bad image_uri {uri!r}: expected gs://<bucket>/<object path>")
    return match.group(1), match.group(2)


# gcsfs probes a gRPC endpoint for hierarchical-namespace buckets at import time
# unless told not to; emulators cannot answer and every access stalls 60 s.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def bucket_filesystem(url: str, listings_cache: bool = True) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and the path (without protocol) of a bucket or object URL:
    gs:// (or a GCS emulator), or a local file:// folder. `listings_cache=False`: every
    listing and `info` asks the store (another process's writes are seen at once)."""
    import fsspec

    options: dict[str, object] = {} if listings_cache else {"use_listings_cache": False}
    if url.startswith(("gs://", "gcs://")) and os.environ.get("STORAGE_EMULATOR_HOST"):
        # The emulator accepts any request; without this gcsfs looks for credentials.
        options["token"] = "anon"
    if url.startswith("file://") or "://" not in url:
        options["auto_mkdir"] = True
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def bucket_name(url: str) -> str | None:
    """The GCS bucket name of a gs:// URL, None for other filesystems."""
    if url.startswith(("gs://", "gcs://")):
        return url.split("://", 1)[1].split("/", 1)[0]
    return None


class BucketUnreachable(RuntimeError):
    """The bucket cannot be reached or does not exist; the message says what to do."""


def check_bucket(url: str, timeout: float = 3.0) -> None:
    """Fail fast, in one clear sentence, when the bucket of `url` cannot be written to:
    gcsfs would otherwise retry for half a minute and end in a long traceback."""
    import urllib.error
    import urllib.request

    if not url.startswith(("gs://", "gcs://")):
        return
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            opener.open(f"{emulator.rstrip('/')}/storage/v1/b", timeout=timeout).close()
        except (urllib.error.URLError, OSError) as exc:
            raise BucketUnreachable(
                f"the GCS emulator at {emulator} does not answer ({exc}): start the local "
                "stack (`farm-platform stack up`) or unset STORAGE_EMULATOR_HOST"
            ) from None
    fs, path = bucket_filesystem(url)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        raise BucketUnreachable(
            f"bucket gs://{bucket} does not exist: create it, or point FARM_BUCKET at yours"
        )
