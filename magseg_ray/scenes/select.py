"""Which STAC items a job maps and which of their assets: the flags of every job that takes a catalog.

Kept apart from :mod:`magseg_ray.scenes.stac` (and light: nothing heavy imported at module level)
because the jobs' configs inherit these fields and build their ``--help`` from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError


@dataclass(frozen=True)
class StacSelect:
    """Which STAC items and which of their assets a job maps (flags of every job taking ``--catalog``)."""

    collection: str = field(default="", metadata=doc(
        "STAC: collection ids, separated by commas (a search's collections; of a static catalog, its items in them)"))
    datetime: str = field(default="", metadata=doc(
        "STAC: acquisition time or interval, RFC 3339 (2021-06-01/2021-09-30, ../2022-01-01)"))
    query: str = field(default="", metadata=doc(
        "STAC: item property filter, CQL2 text (\"eo:cloud_cover<20 and gsd<1\") or CQL2 JSON"))
    asset: str = field(default="", metadata=doc(
        "STAC: the image asset, by key or role; default the first GeoTIFF asset with role data or visual"))

    @classmethod
    def of(cls, config) -> StacSelect:
        """The selection part of a job's config (a subclass's instance)."""
        return cls(**{f: getattr(config, f) for f in cls.__dataclass_fields__})

    def collections(self) -> list[str]:
        return [c.strip() for c in self.collection.split(",") if c.strip()]

    def cql2(self) -> dict | None:
        """The query as CQL2 JSON (``None`` if none); :class:`ConfigError` if it does not parse."""
        import cql2

        if not self.query.strip():
            return None
        try:
            text = self.query.strip()
            expr = cql2.parse_json(text) if text.startswith("{") else cql2.parse_text(text)
            expr.validate()
        except (ValueError, cql2.ParseError, cql2.ValidationError) as e:
            raise ConfigError(f"--query {self.query!r} is not CQL2 text or JSON: {e}") from None
        return expr.to_json()

    def interval(self) -> tuple:
        """``--datetime`` as (start, end) pandas UTC timestamps, open ends ``None``; one instant is both."""
        import pandas as pd

        if not self.datetime.strip():
            return None, None
        ends = self.datetime.split("/") if "/" in self.datetime else [self.datetime] * 2
        try:
            start, end = (None if e.strip() in ("", "..") else pd.Timestamp(e.strip()) for e in ends)
        except ValueError as e:
            raise ConfigError(f"--datetime {self.datetime!r} is not an RFC 3339 time or interval: {e}") from None
        return tuple(None if t is None else (t.tz_localize("UTC") if t.tzinfo is None else t) for t in (start, end))
