"""Index the COG scenes under a root into a GeoParquet scene catalog; print a summary line.

    python jobs/build_catalog.py ROOT [--out CATALOG.parquet] [--stac OUT] [--endpoint-url URL] [--strict]

ROOT is a local folder, a file:// URI or an s3:// prefix; every scene anywhere under it is
catalogued (see :mod:`magseg_ray.scenes.catalog` for the columns). ROOT may also be a STAC source
(catalog.json, collection.json, a STAC API URL, stac-geoparquet: :mod:`magseg_ray.scenes.stac`,
items chosen by --collection, --datetime, --query, --asset). The catalog goes to --out,
by default ROOT/catalog.parquet, for s3:// roots too (the catalog then lives beside its scenes;
a STAC ROOT needs --out). --stac OUT also writes it as a static STAC collection, OUT/collection.json
(OUT a folder or s3:// prefix), which every job's --catalog reads.
S3 access comes from the standard AWS variables (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, ...); --endpoint-url overrides AWS_ENDPOINT_URL. Files that cannot be
catalogued are listed on stderr after the summary (exit status 0), or with --strict the first
one stops the job. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import ConfigError, MagsegError, bad_input_exit
from magseg_ray.scenes.catalog import build_catalog, load_catalog
from magseg_ray.scenes.select import StacSelect
from magseg_ray.scenes.stac import is_stac, write_stac
from magseg_ray.scenes.store import ObjectStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="local folder, file:// URI or s3:// prefix holding the scenes")
    p.add_argument("--out", help="catalog to write: local path or s3:// URI (default: ROOT/catalog.parquet)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS)")
    p.add_argument("--stac", help="also write the catalog as a static STAC collection under this folder or s3:// prefix")
    p.add_argument("--strict", action="store_true", help="stop at the first file that cannot be catalogued")
    add_arguments(p, StacSelect)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the exit status (0, or 2 on a user error)."""
    args = _parser().parse_args(argv)
    out = args.out or os.fspath(args.root).rstrip("/") + "/catalog.parquet"
    indexed = is_stac(args.root) or args.root.lower().endswith(".parquet")
    try:
        if indexed and not args.out:
            raise ConfigError(f"{args.root} is a catalog: name the GeoParquet to write with --out")
        store = ObjectStore.from_env()
        if args.endpoint_url:
            store = dataclasses.replace(store, endpoint_url=args.endpoint_url)
        if indexed:
            catalog = load_catalog(args.root, store, from_arguments(StacSelect, args))
        else:
            catalog = build_catalog(args.root, store, on_error="raise" if args.strict else "record")
        catalog.save(out, store)
        if args.stac:
            out += f" and {write_stac(catalog.scenes, args.stac, store)}"
    except MagsegError as e:
        return bad_input_exit(e)
    crss = catalog.scenes["crs"].value_counts().sort_index()
    by_crs = ", ".join(f"{crs}: {n}" for crs, n in crss.items())
    failures = len(catalog.failures)
    print(f"{len(catalog.scenes)} scenes, {len(crss)} CRSs ({by_crs}), {failures} failures -> {out}")
    for failure in catalog.failures.itertuples():
        print(f"skipped {failure.uri}: {failure.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
