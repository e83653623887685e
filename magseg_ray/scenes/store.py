"""Where scenes live: local folders, ``file://`` URIs and S3-compatible object stores.

An :class:`ObjectStore` says how to reach an S3 API (AWS, or a compatible server such as MinIO)
and hands out the two clients the project reads through: a GDAL environment
(:meth:`ObjectStore.rasterio_env`) in which rasterio reads COG headers and windows with HTTP range
requests over ``/vsis3/``, and an fsspec filesystem (:meth:`ObjectStore.filesystem`) to list
prefixes and move whole small objects. :func:`list_cogs` finds the scenes under a root.

Scene layout, per scene id (an id holds no dot): ``<id>.tif`` (or ``.tiff``) is the image, with
optional sidecars beside it, ``<id>.labels.tif`` (field instance raster) and ``<id>.fields.gpkg``
(field polygons). A ``<name>.<suffix>.tif`` is always a sidecar, never a scene.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

import fsspec
import rasterio
from rasterio.session import AWSSession

from magseg_ray.errors import ConfigError, SceneError

IMAGE_SUFFIXES = (".tif", ".tiff")
"""File name endings of scene images (compared case-insensitively)."""
SIDECARS = {"labels_uri": ".labels.tif", "fields_uri": ".fields.gpkg"}
"""Sidecar field of :class:`SceneFiles` -> what follows the scene id in the sidecar's name."""
COG_READ_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # never list a prefix to open one object
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.gpkg,.parquet",  # scenes, sidecars, catalogs
    "VSI_CACHE": "TRUE",  # keep fetched ranges of an open file (headers, tiles read twice)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent tiles in one request
}
"""GDAL options for reading COGs over HTTP, set by :meth:`ObjectStore.rasterio_env`."""
READ_RETRY = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "1"}
"""GDAL's own retry settings, defaults unless set in the environment (see :func:`read_retry`): GDAL
retries a request answered 429 or 5xx that many times, first after that many seconds. A refused or
dropped connection (a restarting store) GDAL 3.10 does not retry (measured): the chip reader
(:func:`magseg_ray.chips.read.read_window`) retries those itself with the same count and first delay,
doubling it each time (1 + 2 + 4 + 8 + 16 s by default)."""


def read_retry() -> tuple[int, float]:
    """GDAL's retry count and first delay in seconds (:data:`READ_RETRY`, or the environment's)."""
    return (int(os.environ.get("GDAL_HTTP_MAX_RETRY", READ_RETRY["GDAL_HTTP_MAX_RETRY"])),
            float(os.environ.get("GDAL_HTTP_RETRY_DELAY", READ_RETRY["GDAL_HTTP_RETRY_DELAY"])))


def split_uri(uri: str | os.PathLike) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``s3://bucket/key``; ``("file", absolute path)`` for a local path or
    ``file://`` URI. Any other scheme raises :class:`SceneError`."""
    text = os.fspath(uri)
    parts = urlsplit(text)
    if parts.scheme == "s3":
        return "s3", f"{parts.netloc}/{parts.path.lstrip('/')}".rstrip("/")
    if parts.scheme == "file":
        return "file", os.path.abspath(unquote(parts.path))
    if parts.scheme:
        raise SceneError(f"{text}: unsupported URI scheme {parts.scheme!r} (use a path, file:// or s3://)")
    return "file", os.path.abspath(text)


def is_web(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is an ``http(s)://`` URL: an image read in place (a STAC asset), never written."""
    return urlsplit(os.fspath(uri)).scheme in ("http", "https")


def remote(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is read over the network (``s3://``, ``http(s)://``), inside :meth:`ObjectStore.rasterio_env`."""
    return is_web(uri) or split_uri(uri)[0] == "s3"


def _true(value: str) -> bool:
    return value.strip().upper() in ("1", "TRUE", "YES", "ON")


@dataclass(frozen=True)
class ObjectStore:
    """How to reach an S3 API; a plain ``ObjectStore()`` is AWS with the usual credential chain.

    Holds only strings, so it pickles to Ray workers; clients are made on demand.
    """

    endpoint_url: str | None = None
    """Base URL of an S3-compatible server, e.g. ``http://127.0.0.1:9000``. ``None``: AWS S3."""
    region: str | None = None
    """Region to sign requests for. ``None``: the credential chain's region, else us-east-1."""
    access_key_id: str | None = None
    """Access key. ``None`` (with the secret): the usual AWS credential chain (environment,
    ``~/.aws`` files, instance or container role)."""
    secret_access_key: str | None = None
    """Secret key paired with :attr:`access_key_id`."""
    session_token: str | None = None
    """Session token of temporary credentials, else ``None``."""
    virtual_hosting: bool | None = None
    """Bucket in the host name (``bucket.host/key``) rather than the path (``host/bucket/key``).
    ``None``: virtual hosting for AWS, path style for a custom endpoint (what such servers expect)."""
    max_attempts: int = 10
    """Attempts of every s3fs request, by botocore's ``standard`` retry mode (connection errors,
    throttling and 5xx, exponential backoff with jitter, capped at 20 s a wait: an outage of about a
    minute is ridden out); ``AWS_MAX_ATTEMPTS`` in :meth:`from_env`. s3fs's own retries of its
    retryable errors (``S3FileSystem.retries``, 5) stay as they are."""

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"endpoint URL {self.endpoint_url!r} is not http(s)://HOST[:PORT]")

    @property
    def https(self) -> bool:
        """Whether requests use TLS: derived from the endpoint URL's scheme (AWS: always)."""
        return self.endpoint_url is None or urlsplit(self.endpoint_url).scheme == "https"

    @property
    def path_style(self) -> bool:
        """Whether buckets go in the URL path (see :attr:`virtual_hosting`)."""
        if self.virtual_hosting is None:
            return self.endpoint_url is not None
        return not self.virtual_hosting

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObjectStore:
        """Read the standard variables: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION``
        or ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_SESSION_TOKEN``, ``AWS_MAX_ATTEMPTS`` and GDAL's ``AWS_VIRTUAL_HOSTING`` (from ``os.environ``
        by default)."""
        env = os.environ if environ is None else environ
        hosting = env.get("AWS_VIRTUAL_HOSTING")
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            virtual_hosting=None if hosting is None else _true(hosting),
            max_attempts=int(env.get("AWS_MAX_ATTEMPTS") or cls.max_attempts),
        )

    def rasterio_env(self, **options: str | bool | int) -> rasterio.Env:
        """A ``rasterio.Env`` that reads ``/vsis3/`` paths from this store (credentials through an
        ``AWSSession``) with :data:`COG_READ_OPTIONS`; ``options`` add or override GDAL options."""
        endpoint = urlsplit(self.endpoint_url).netloc if self.endpoint_url else None
        retries, delay = read_retry()
        gdal = {
            **COG_READ_OPTIONS, "GDAL_HTTP_MAX_RETRY": str(retries), "GDAL_HTTP_RETRY_DELAY": str(delay),
            "AWS_HTTPS": "YES" if self.https else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE" if self.path_style else "TRUE",
        }
        if endpoint:
            gdal["AWS_S3_ENDPOINT"] = endpoint
        return rasterio.Env(session=_aws_session(self), **{**gdal, **options})

    def filesystem(self, uri: str | os.PathLike) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem for ``uri``: s3fs on this store for ``s3://``, else the local one.

        Paths on it are the second part of :func:`split_uri`. Listings are not cached, so a
        listing always shows the objects there now.
        """
        if split_uri(uri)[0] != "s3":
            return fsspec.filesystem("file")
        return fsspec.filesystem(
            "s3",
            key=self.access_key_id,
            secret=self.secret_access_key,
            token=self.session_token,
            use_listings_cache=False,
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": self.region},
            config_kwargs={"s3": {"addressing_style": "path" if self.path_style else "virtual"},
                           "retries": {"max_attempts": self.max_attempts, "mode": "standard"}},
        )

    def gdal_path(self, uri: str | os.PathLike) -> str:
        """A path rasterio opens inside :meth:`rasterio_env`: ``/vsis3/bucket/key`` for
        ``s3://bucket/key``, ``/vsicurl/URL`` for an ``http(s)://`` URL (a STAC asset: read-only,
        by range requests), the absolute local path for a local path or ``file://`` URI."""
        if is_web(uri):
            return f"/vsicurl/{os.fspath(uri)}"
        scheme, path = split_uri(uri)
        return f"/vsis3/{path}" if scheme == "s3" else path


@lru_cache(maxsize=16)
def _aws_session(store: ObjectStore) -> AWSSession:
    """One rasterio ``AWSSession`` per store and process. Making one builds a boto3 session, which
    cost two thirds of a chip read when done per chip (measured: 0.5 of 0.78 s per chip under
    cProfile); its credentials are still read, and refreshed when they expire, on every use."""
    return AWSSession(
        aws_access_key_id=store.access_key_id,
        aws_secret_access_key=store.secret_access_key,
        aws_session_token=store.session_token,
        region_name=store.region,
        endpoint_url=urlsplit(store.endpoint_url).netloc if store.endpoint_url else None,
    )


@dataclass(frozen=True)
class SceneFiles:
    """One scene's files, as URIs: ``s3://bucket/key``, or absolute paths for local roots."""

    id: str
    """Scene id: the image's file name without its ``.tif``."""
    uri: str
    """The scene image."""
    labels_uri: str | None
    """``<id>.labels.tif`` beside the image, if there."""
    fields_uri: str | None
    """``<id>.fields.gpkg`` beside the image, if there."""


def list_cogs(root: str | os.PathLike, store: ObjectStore | None = None) -> list[SceneFiles]:
    """The scenes anywhere under ``root`` (a local folder, ``file://`` URI or ``s3://`` prefix), sorted
    by URI, each with its sidecars; ``[]`` if there are none or ``root`` does not exist.

    A listing the store refuses (missing bucket, no permission, no connection) raises
    :class:`SceneError`.
    """
    store = store or ObjectStore.from_env()
    scheme, path = split_uri(root)
    try:
        names = set(store.filesystem(root).find(path))
    except (OSError, ValueError) as e:  # s3fs: FileNotFoundError, PermissionError; botocore: ValueError
        raise SceneError(f"{os.fspath(root)}: cannot list: {e}") from None

    def as_uri(name: str) -> str:
        return f"s3://{name}" if scheme == "s3" else name

    scenes = []
    for name in sorted(names):
        stem, suffix = posixpath.splitext(posixpath.basename(name))
        if suffix.lower() not in IMAGE_SUFFIXES or "." in stem:
            continue
        base = name[: -len(suffix)]
        sidecars = {key: as_uri(base + end) if base + end in names else None for key, end in SIDECARS.items()}
        scenes.append(SceneFiles(id=stem, uri=as_uri(name), **sidecars))
    return scenes
