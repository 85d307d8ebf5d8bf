"""Where the models folder lives: a local folder, or a bucket (`FARM_MODELS_DIR=gs://…/models`).

Both hold the same layout (`farm_platform.ml.registry`): `registry.json`, and per model
version `<model_id>/<version>/card.json` and its weights. `ModelRegistry` reads and writes
through one of the two stores below; everything above it (cards, sha256 checks, the CLI,
the sensor, the model server) is the same for both.

The bucket's write discipline, so that a reader never follows a pointer to something that
is not there yet and never reads half of anything:
- a version's weights are uploaded before its card, and the card only if none is there
  (`ifGenerationMatch=0`): a version exists for readers from the moment its card does, and
  an interrupted upload leaves only weights that no card names;
- `registry.json` is written last, in one request (GCS makes a new object generation
  visible whole or not at all), and only over the generation it was read at
  (`ifGenerationMatch`): two activations at once never lose one another's change;
- a reader takes the registry's generation first and then reads exactly that generation.

Weights are downloaded once per process into a local cache keyed by their sha256 (the
folder the caller names: FARM_MODELS_CACHE), checked against the card before they are
kept there, and checked again like local weights whenever a model loads.

No torch here, and gcsfs is imported only when a bucket is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

# A registry rewritten between our generation check and our read: read again, this often.
_READ_ATTEMPTS = 5


class RegistryConflict(RuntimeError):
    """registry.json changed between our read and our write (another writer was first)."""


class LocalModelStore:
    """A models folder on this machine: today's files, read and replaced in place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, relative: str = "") -> Path:
        return self.root / relative if relative else self.root

    def read_bytes(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return (self.root / relative).is_file()

    def generation(self, relative: str) -> str | None:
        """A stand-in for a generation: changes whenever the file is replaced."""
        try:
            stat = (self.root / relative).stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"

    def read_with_generation(self, relative: str) -> tuple[bytes, str]:
        path = self.root / relative
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            return handle.read(), f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"

    def card_paths(self) -> list[tuple[str, str]]:
        """(model_id, version) of every `<id>/<version>/card.json`, staging folders aside."""
        return sorted(
            (p.parent.parent.name, p.parent.name)
            for p in self.root.glob("*/*/card.json")
            if not p.parent.parent.name.startswith(".")
        )

    def write_json(self, relative: str, data: Any, if_generation: str | None = None) -> None:
        # Local writers replace the file in one step; there is no compare-and-swap here.
        del if_generation
        write_json_atomic(self.root / relative, data)

    def weights_file(self, relative: str, sha256: str) -> Path:
        del sha256
        return self.root / relative


class BucketModelStore:
    """A models folder in a bucket (gcsfs; the GCS emulator via STORAGE_EMULATOR_HOST)."""

    def __init__(self, url: str, cache_dir: Path | None = None) -> None:
        from farm_platform.layout import bucket_filesystem

        self.url = url.rstrip("/")
        self.cache_dir = cache_dir or default_cache_dir()
        # No listings cache: another process's new registry generation or version must be
        # seen at the next look, not when a cache expires.
        self.fs: AbstractFileSystem
        self.fs, self.path = bucket_filesystem(self.url, listings_cache=False)

    def location(self, relative: str = "") -> str:
        return f"{self.url}/{relative}" if relative else self.url

    def _key(self, relative: str) -> str:
        return f"{self.path}/{relative}"

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self._key(relative))

    def exists(self, relative: str) -> bool:
        return self.generation(relative) is not None

    def generation(self, relative: str) -> str | None:
        try:
            details = self.fs.info(self._key(relative))
        except FileNotFoundError:
            return None
        if details.get("type") == "directory":
            return None
        return str(details.get("generation") or "")

    def read_with_generation(self, relative: str) -> tuple[bytes, str]:
        """The object's bytes and generation, read together: the generation first, then
        exactly that generation (an object rewritten in between is read again)."""
        for _ in range(_READ_ATTEMPTS):
            generation = self.generation(relative)
            if generation is None:
                raise FileNotFoundError(self.location(relative))
            try:
                return self.fs.cat_file(self._key(relative), generation=generation), generation
            except FileNotFoundError:
                continue  # replaced since: that generation is gone
        raise RegistryConflict(
            f"{self.location(relative)} changed {_READ_ATTEMPTS} times while being read"
        )

    def card_paths(self) -> list[tuple[str, str]]:
        found = []
        for key in self.fs.glob(self._key("*/*/card.json")):
            model_id, version = key.split("/")[-3:-1]
            if not model_id.startswith("."):
                found.append((model_id, version))
        return sorted(found)

    def _upload(self, relative: str, data: bytes, if_generation: str, content_type: str) -> None:
        """One multipart upload with `ifGenerationMatch` (0: only if absent), as gcsfs's own
        `pipe_file(mode="create")` does it; GCS answers 412 (FileExistsError in gcsfs) when
        the object's generation differs. The multipart form, not the media one: the GCS
        emulator honours the precondition only there."""
        bucket, _, key = self._key(relative).partition("/")
        metadata = json.dumps({"name": key})
        body = (
            (
                f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{metadata}\n"
                f"--==0==\nContent-Type: {content_type}\n\n"
            ).encode()
            + data
            + b"\n--==0==--"
        )
        self.fs.call(
            "POST",
            f"{self.fs._location}/upload/storage/v1/b/{bucket}/o",  # noqa: SLF001 (gcsfs's endpoint)
            uploadType="multipart",
            headers={"Content-Type": 'multipart/related; boundary="==0=="'},
            data=body,
            json_out=True,
            ifGenerationMatch=if_generation,
        )

    def write_json(self, relative: str, data: Any, if_generation: str | None = None) -> None:
        """Write a JSON object in one request; with `if_generation` ("0": only if absent) only
        over that generation, else RegistryConflict."""
        payload = (json.dumps(data, indent=2) + "\n").encode()
        if if_generation is None:
            self.fs.pipe_file(self._key(relative), payload, content_type="application/json")
            return
        try:
            self._upload(relative, payload, if_generation, "application/json")
        except FileExistsError:
            raise RegistryConflict(
                f"{self.location(relative)} is no longer at generation {if_generation}"
            ) from None

    def put_file(self, local: Path, relative: str, create_only: bool = False) -> None:
        """Upload one file; `create_only`: FileExistsError if the object is already there."""
        data = local.read_bytes()
        if create_only:
            self._upload(relative, data, "0", "application/octet-stream")
        else:
            self.fs.pipe_file(self._key(relative), data)

    def weights_file(self, relative: str, sha256: str) -> Path:
        """The weights at `relative` as a local file in the cache, checked against `sha256`:
        downloaded only when the cache does not already hold those bytes (so at most once
        per process). FileNotFoundError if the object is missing; WeightsMismatch (with the
        actual sha256) if its bytes are not those of `sha256`, and then nothing is cached."""
        cached = self.cache_dir / sha256 / relative.rsplit("/", 1)[-1]
        with _DOWNLOAD_LOCK:
            if cached.is_file() and sha256_file(cached) == sha256:
                return cached
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".download-")
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, self.fs.open(self._key(relative), "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                DOWNLOADS.append(self.location(relative))
                if digest.hexdigest() != sha256:
                    raise WeightsMismatch(digest.hexdigest())
                os.chmod(tmp, 0o644)
                os.replace(tmp, cached)  # concurrent processes: the same bytes, either wins
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return cached


class WeightsMismatch(Exception):
    """Downloaded weights whose sha256 (the argument) is not the card's."""

    @property
    def actual(self) -> str:
        return str(self.args[0])


# One download at a time in a process: two threads loading one model fetch it once.
_DOWNLOAD_LOCK = threading.Lock()
# Every download this process made (the object's URL): how the tests count them.
DOWNLOADS: list[str] = []


def default_cache_dir() -> Path:
    """Where weights are kept when FARM_MODELS_CACHE is unset:
    `$XDG_CACHE_HOME/farm_platform/models` (~/.cache/…)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "farm_platform" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_store(
    location: Path | str, cache_dir: Path | None = None
) -> LocalModelStore | BucketModelStore:
    """The store of a models folder: `location` as `config.parse_models_dir` gives it;
    weights read from a bucket are kept in `cache_dir` (default: `default_cache_dir()`)."""
    if isinstance(location, str):
        return BucketModelStore(location, cache_dir)
    return LocalModelStore(location)


def write_text_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    """Replace a text file in one step so a concurrent reader sees the old file or the new
    one, never half of it: `write` fills a temporary file beside it, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        # mkstemp creates 0600 files; cards, the registry and the field map are meant to be
        # shared (and the first two committed).
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON file in one step so a concurrent reader never sees half of it."""

    def dump(handle: TextIO) -> None:
        json.dump(data, handle, indent=2)
        handle.write("\n")

    write_text_atomic(path, dump)
