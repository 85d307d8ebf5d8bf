"""fsspec access to `FARM_BUCKET` (gs://, a GCS emulator, or a local file:// folder)."""

from __future__ import annotations

import os

import fsspec
from fsspec import AbstractFileSystem

# gcsfs probes a gRPC endpoint for hierarchical-namespace buckets at import time
# unless told not to; emulators cannot answer and every access stalls 60 s.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def bucket_filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """Return the filesystem and the path (without protocol) for a bucket URL or object URL."""
    options: dict[str, object] = {}
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
