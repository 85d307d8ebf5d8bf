"""The farm bucket as a Dagster resource (docs/contracts.md, Bucket layout)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from farm_platform.layout import ImageKey, bucket_filesystem, raw_image_uri


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    # GCS object generation; for other filesystems a stand-in that changes on rewrite.
    generation: str


class BucketResource(ConfigurableResource):
    """Raw images and leaf crops under `FARM_BUCKET` (gs://, GCS emulator or file://)."""

    url: str = Field(description="fsspec URL of the bucket root, e.g. gs://farm-images")
    _filesystem: Any = PrivateAttr(default=None)

    @cached_property
    def root(self) -> str:
        return self.url.rstrip("/")

    @property
    def filesystem(self) -> Any:
        if self._filesystem is None:
            self._filesystem = bucket_filesystem(self.root)[0]
        return self._filesystem

    def image_uri(self, key: ImageKey) -> str:
        return raw_image_uri(self.root, key)

    def info(self, uri: str) -> ObjectInfo | None:
        """Size and generation of an object, None if it does not exist."""
        try:
            details = self.filesystem.info(uri)
        except FileNotFoundError:
            return None
        if details.get("type") == "directory":
            return None
        generation = details.get("generation") or _local_generation(details)
        return ObjectInfo(uri, int(details.get("size") or 0), str(generation))

    def read(self, uri: str) -> bytes:
        return self.filesystem.cat_file(uri)

    def read_many(self, uris: Sequence[str], threads: int = 16) -> list[bytes | None]:
        """Read objects concurrently (object stores reward parallel requests); None if missing."""

        def read_or_none(uri: str) -> bytes | None:
            try:
                return self.read(uri)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(read_or_none, uris))

    def write(self, uri: str, data: bytes) -> None:
        self.filesystem.pipe_file(uri, data)


def _local_generation(details: dict[str, Any]) -> str:
    # Local files have no generation; mtime and size change whenever the file is rewritten.
    stamp = f"{details.get('mtime') or details.get('created')}:{details.get('size')}"
    return hashlib.sha1(stamp.encode()).hexdigest()[:16]
