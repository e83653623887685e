import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform
from shapely.geometry import Point

from magseg_ray.errors import SceneError
from magseg_ray.scenes.catalog import COLUMNS, build_catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]
NAIP = REPO / "tests/data/naip"
# Scenes in UTM 17N and 15N; the folder also holds a labels-only sample, which is no scene.
IDS = ["naip_43p4066_m83p6220", "naip_44p0347_m93p8702"]
URI_COLUMNS = ["uri", "labels_uri", "fields_uri"]


def _job():
    spec = importlib.util.spec_from_file_location("build_catalog_job", REPO / "jobs/build_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tif(path, size=64, dtype="uint8", driver="COG", tags=None, **profile):
    data = np.zeros((1, size, size), dtype)
    transform = from_origin(500_000, 4_600_000, 0.5, 0.5)
    profile |= dict(driver=driver, width=size, height=size, count=1, dtype=dtype, crs="EPSG:32616")
    with rasterio.open(path, "w", transform=transform, **profile) as dst:
        dst.write(data)
        dst.update_tags(**(tags or {}))
    return path


@pytest.fixture(scope="module")
def naip_s3(s3_server):
    return s3_server.upload(NAIP, "catalog-tests", "naip/2020")


def test_catalog_from_s3(naip_s3, s3_server):
    catalog = build_catalog(naip_s3, s3_server.store)
    scenes = catalog.scenes
    assert list(scenes.columns) == list(COLUMNS) and catalog.failures.empty
    assert list(scenes["id"]) == IDS and scenes.crs == "EPSG:4326"
    assert sorted(scenes["crs"]) == ["EPSG:32615", "EPSG:32617"]
    for row in scenes.itertuples():
        assert (row.uri, row.labels_uri, row.fields_uri) == tuple(
            f"{naip_s3}/{row.id}{end}" for end in (".tif", ".labels.tif", ".fields.gpkg")
        )
        with rasterio.open(NAIP / f"{row.id}.tif") as src:
            assert (row.width, row.height, row.crs) == (src.width, src.height, src.crs.to_string())
            assert row.native_bounds == pytest.approx(list(src.bounds))
        west, south, east, north = row.native_bounds
        (x,), (y,) = transform(row.crs, "EPSG:4326", [(west + east) / 2], [(south + north) / 2])
        assert row.geometry.contains(Point(x, y))
        lat, lon = (float(v.lstrip("m").replace("p", ".")) for v in row.id.split("_")[1:])
        assert row.geometry.contains(Point(-lon, lat))  # the NAIP id names the scene's centre
        assert (row.bands, row.dtype, row.gsd, row.is_cog) == (3, "uint8", pytest.approx(1.0), True)
        assert pd.isna(row.nodata) and pd.isna(row.datetime)


def test_local_file_uri_and_s3_catalogs_agree(naip_s3, s3_server):
    local = build_catalog(NAIP).scenes
    assert list(local["uri"]) == [str(NAIP / f"{i}.tif") for i in IDS]
    pd.testing.assert_frame_equal(build_catalog(NAIP.as_uri()).scenes, local)
    remote = build_catalog(naip_s3, s3_server.store).scenes
    pd.testing.assert_frame_equal(remote.drop(columns=URI_COLUMNS), local.drop(columns=URI_COLUMNS))


def test_datetime_from_tags_and_cog_flag(tmp_path):
    write_tif(tmp_path / "iso.tif", tags={"ACQUISITION_DATETIME": "2021-07-04T15:30:00+02:00"})
    write_tif(tmp_path / "tiff.tif", tags={"TIFFTAG_DATETIME": "2020:06:01 10:00:00"})
    write_tif(tmp_path / "bad.tif", tags={"ACQUISITION_DATETIME": "yesterday"})
    write_tif(tmp_path / "plain.tif", size=600, driver="GTiff", dtype="uint16", nodata=0)  # stripped
    scenes = build_catalog(tmp_path).scenes.set_index("id")
    assert scenes.loc["iso", "datetime"] == pd.Timestamp("2021-07-04T13:30:00Z")
    assert scenes.loc["tiff", "datetime"] == pd.Timestamp("2020-06-01T10:00:00Z")
    assert pd.isna(scenes.loc["bad", "datetime"]) and pd.isna(scenes.loc["plain", "datetime"])
    assert scenes["is_cog"].to_dict() == {"bad": True, "iso": True, "plain": False, "tiff": True}
    assert scenes.loc["plain", ["dtype", "nodata", "gsd"]].tolist() == ["uint16", 0, 0.5]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_bad_files_are_recorded_and_the_rest_catalogued(tmp_path, s3_server, where):
    shutil.copy(NAIP / f"{IDS[0]}.tif", tmp_path)
    (tmp_path / "corrupt.tif").write_bytes(np.random.default_rng(0).bytes(5000))
    write_tif(tmp_path / "float.tif", dtype="float32")
    root = str(tmp_path) if where == "local" else s3_server.upload(tmp_path, "catalog-tests", f"bad/{where}")
    catalog = build_catalog(root, s3_server.store)
    assert list(catalog.scenes["id"]) == [IDS[0]]
    reasons = dict(zip(catalog.failures["uri"], catalog.failures["reason"]))
    assert list(reasons) == [f"{root}/corrupt.tif", f"{root}/float.tif"]
    assert reasons[f"{root}/corrupt.tif"].startswith("not a readable GeoTIFF")
    assert reasons[f"{root}/float.tif"] == "unsupported dtype float32 (supported: uint8, uint16)"
    with pytest.raises(SceneError, match="corrupt.tif: not a readable GeoTIFF"):
        build_catalog(root, s3_server.store, on_error="raise")


def test_missing_or_empty_roots_raise(tmp_path, naip_s3, s3_server):
    with pytest.raises(SceneError, match="no COG scenes under"):
        build_catalog(tmp_path / "missing")
    with pytest.raises(SceneError, match="no COG scenes under"):
        build_catalog(naip_s3 + "-missing", s3_server.store)
    with pytest.raises(SceneError, match="cannot list"):
        build_catalog("s3://no-such-bucket/naip", s3_server.store)
    (tmp_path / "only.tif").write_bytes(b"not a tiff")
    with pytest.raises(SceneError, match="no readable COG scenes under .*1 failed, e.g. .*only.tif"):
        build_catalog(tmp_path)


def test_duplicate_ids_are_recorded(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_tif(tmp_path / sub / "scene.tif")
    catalog = build_catalog(tmp_path)
    assert list(catalog.scenes["uri"]) == [str(tmp_path / "a/scene.tif")]
    first = tmp_path / "a/scene.tif"
    assert list(catalog.failures["reason"]) == [f"duplicate scene id 'scene' (also {first})"]


def test_catalog_reads_headers_and_one_tile(tmp_path, s3_server):
    """The header and the last full-resolution tile (512 px, a sixteenth of this scene's level)."""
    path = write_tif(tmp_path / "big.tif", size=2048, compress="NONE")
    root = s3_server.upload(path, "catalog-tests", "big")
    before = s3_server.sent_bytes
    assert build_catalog(root, s3_server.store).scenes["is_cog"].tolist() == [True]
    assert s3_server.sent_bytes - before < 0.1 * path.stat().st_size


def test_save_load_round_trip(tmp_path, naip_s3, s3_server):
    catalog = build_catalog(NAIP)
    out = tmp_path / "cat/catalog.parquet"
    assert catalog.save(out) == str(out) and catalog.save(out) == str(out)  # replaces in place
    assert [p.name for p in out.parent.iterdir()] == ["catalog.parquet"]
    pd.testing.assert_frame_equal(load_catalog(out).scenes, catalog.scenes)
    assert load_catalog(out).failures.empty
    parquet = pq.read_schema(out)
    assert "bbox" in parquet.names and b'"version": "1.1.0"' in parquet.metadata[b"geo"]
    remote = catalog.save(f"{naip_s3}/catalog.parquet", s3_server.store)
    pd.testing.assert_frame_equal(load_catalog(remote, s3_server.store).scenes, catalog.scenes)
    assert list(build_catalog(naip_s3, s3_server.store).scenes["id"]) == IDS  # the catalog is no scene


def test_load_catalog_of_a_root_indexes_it(tmp_path):
    pd.testing.assert_frame_equal(load_catalog(NAIP).scenes, build_catalog(NAIP).scenes)
    with pytest.raises(SceneError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(SceneError, match="not a GeoParquet file"):
        load_catalog(tmp_path / "junk.parquet")


def test_job(tmp_path, capsys, naip_s3, s3_server, monkeypatch):
    root = shutil.copytree(NAIP, tmp_path / "naip")
    assert _job().main([str(root)]) == 0
    assert capsys.readouterr().out == (
        f"2 scenes, 2 CRSs (EPSG:32615: 1, EPSG:32617: 1), 0 failures -> {root}/catalog.parquet\n"
    )
    assert list(load_catalog(root / "catalog.parquet").scenes["id"]) == IDS
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    out = f"{naip_s3}/job/catalog.parquet"
    assert _job().main([naip_s3, "--out", out, "--endpoint-url", s3_server.endpoint_url]) == 0
    assert list(load_catalog(out, s3_server.store).scenes["id"]) == IDS
    capsys.readouterr()
    assert _job().main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: no COG scenes under")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_truncated_cog_is_not_catalogued(tmp_path, s3_server, where):
    """A COG cut short keeps a good header (and its overviews): only reading the last tile of
    the full-resolution level shows the damage."""
    path = tmp_path / "cut.tif"
    profile = dict(driver="COG", width=1024, height=1024, count=3, dtype="uint8", crs="EPSG:32616")
    with rasterio.open(path, "w", transform=from_origin(500_000, 4_600_000, 0.5, 0.5), **profile) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 1024, 1024), dtype=np.uint8))
    write_tif(tmp_path / "whole.tif")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    with rasterio.open(path) as src:  # what cataloguing saw before: a readable header, COG layout
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1)
    root = str(tmp_path) if where == "local" else s3_server.upload(tmp_path, "catalog-tests", f"cut/{where}")
    catalog = build_catalog(root, s3_server.store)
    assert list(catalog.scenes["id"]) == ["whole"]
    (uri, reason, footprint), = catalog.failures.itertuples(index=False)
    assert uri == f"{root}/cut.tif" and reason.startswith("truncated or damaged: the last tile")
    whole = catalog.scenes.geometry.iloc[0]  # whole.tif: 64 px at cut.tif's origin, so inside its footprint
    assert footprint.intersects(whole) and footprint.area == pytest.approx(256 * whole.area, rel=0.01)
    with pytest.raises(SceneError, match="cut.tif: truncated or damaged"):
        build_catalog(root, s3_server.store, on_error="raise")
