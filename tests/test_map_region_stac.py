"""jobs/map_region.py with STAC catalogs and overlapping scenes, end to end on a local Ray with the
offline ``tiny`` model (random weights: what is compared is which chips are read and that the same
chips give the same fields, not the map's quality). Scenes live on a local S3 (moto); the STAC API
is stac-fastapi-static on 127.0.0.1 (tests/scenes/stac_servers.py)."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from magseg_ray.map_region import DEMO_DIR, MapConfig, plan
from magseg_ray.model.card import ModelPrompt, write_model_prompt
from magseg_ray.scenes.catalog import build_catalog, load_catalog
from tests.scenes.stac_servers import StacApi, upload_tree, user_item, write_catalog

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "map-stac"
NAIP = "naip_43p7840_m92p4228"
SEAM_AOI = shapely.box(101.9995, 12.9995, 102.0005, 13.0005)
"""Across the seam of the two synthetic scenes (UTM 47N and 48N)."""
NAIP_AOI = shapely.box(-92.4242, 43.7830, -92.4228, 43.7842)


def job_main():
    spec = importlib.util.spec_from_file_location("map_region_job", ROOT / "jobs" / "map_region.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir, s3_server):
    """The tiny model with a 128 px chip card; the demo scenes on S3 with three catalogs of them (the
    project's GeoParquet, a provider-style static STAC catalog, and one with two copies of the NAIP
    scene of different dates); the AOIs."""
    root = tmp_path_factory.mktemp("map_stac")
    model = root / "model"
    shutil.copytree(tiny_dir, model)
    write_model_prompt(model, ModelPrompt(chip_size=128))
    scenes_uri = s3_server.upload(DEMO_DIR / "scenes", BUCKET, "scenes")
    catalog = build_catalog(scenes_uri, s3_server.store)
    parquet = catalog.save(f"s3://{BUCKET}/catalog.parquet", s3_server.store)
    rows = catalog.scenes.set_index("id", drop=False)
    items = {"naip": [user_item(rows.loc[NAIP], rows.loc[NAIP]["uri"], "naip", "2021-07-18T17:00:00+00:00", 0.0)],
             "synth": [user_item(rows.loc[s], rows.loc[s]["uri"], "synth", "2024-01-15T03:30:00+00:00", 5.0)
                       for s in ("synth_900", "synth_901")]}
    local = write_catalog(root / "stac", items)
    static = upload_tree(s3_server, root / "stac", BUCKET, "stac") + "/catalog.json"
    copies = {"naip": [user_item({**rows.loc[NAIP], "id": "naip_older"}, rows.loc[NAIP]["uri"], "naip",
                                 "2019-07-18T17:00:00+00:00", 0.0),
                       user_item({**rows.loc[NAIP], "id": "naip_newer"}, rows.loc[NAIP]["uri"], "naip",
                                 "2021-07-18T17:00:00+00:00", 30.0)]}
    write_catalog(root / "copies", copies)
    two = upload_tree(s3_server, root / "copies", BUCKET, "copies") + "/catalog.json"
    aois = {}
    for name, box in (("seam", SEAM_AOI), ("naip", NAIP_AOI)):
        aois[name] = root / f"{name}.geojson"
        aois[name].write_text(gpd.GeoSeries([box], crs="EPSG:4326").to_json())
    return {"root": root, "model": str(model), "parquet": parquet, "static": static, "local_stac": local,
            "copies": two, "aois": aois}


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1",
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)


def run(setup, address, capsys, name, aoi, catalog, *extra):
    out = setup["root"] / name
    argv = ["--aoi", str(setup["aois"][aoi]), "--catalog", catalog, "--model", setup["model"], "--out", str(out),
            "--address", address, "--max-new-tokens", "8", "--cpus-per-actor", "0.5", "--overlap", "32", *extra]
    assert job_main()(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fields = gpd.read_parquet(out / "fields")
    digest = hashlib.sha256(b"".join(sorted(shapely.normalize(g).wkb for g in fields.geometry))).hexdigest()
    return summary, fields, digest


@pytest.mark.slow
def test_a_static_stac_catalog_and_a_stac_api_map_to_the_fields_of_the_geoparquet_catalog(
        ray_cluster, setup, s3_env, capsys):
    address = ray_cluster.address
    reference, fields, digest = run(setup, address, capsys, "parquet", "seam", setup["parquet"])
    assert reference["status"] == "complete" and reference["scenes"] == 2 and len(fields) > 0
    static, static_fields, static_digest = run(setup, address, capsys, "static", "seam", setup["static"])
    with StacApi(setup["local_stac"]) as api:
        searched, api_fields, api_digest = run(setup, address, capsys, "api", "seam", f"{api.url}/search",
                                               "--collection", "synth", "--query", "eo:cloud_cover<20")
    for summary, f, d in ((static, static_fields, static_digest), (searched, api_fields, api_digest)):
        assert summary["status"] == "complete" and summary["chips"] == reference["chips"]
        assert len(f) == len(fields) and d == digest
        assert sorted(f["scene_id"].unique()) == sorted(fields["scene_id"].unique())


@pytest.mark.slow
def test_overlapping_copies_decode_each_chip_once_from_the_newest(ray_cluster, setup, s3_env, capsys):
    single, _, _ = run(setup, ray_cluster.address, capsys, "single", "naip", setup["parquet"])
    both, fields, _ = run(setup, ray_cluster.address, capsys, "two_copies", "naip", setup["copies"])
    assert both["chips"] == single["chips"] and both["patches"] == single["patches"]
    assert both["mapped_km2"] <= both["aoi_km2"] and single["mapped_km2"] <= single["aoi_km2"]
    assert set(fields["scene_id"]) == {"naip_newer"}  # newer, though cloudier and later by id
    assert both["scene_choice"]["scenes"] == [{"id": "naip_newer", "datetime": "2021-07-18T17:00:00+00:00",
                                               "cloud_cover": 30.0, "chips": both["chips"]}]
    assert both["scene_choice"]["unused"] == ["naip_older"]


def test_overlapping_copies_plan_each_chip_once(setup, s3_env):
    """Planning alone (no Ray): the copies' chips are the single scene's, all from the newer copy."""
    config = MapConfig(aoi=str(setup["aois"]["naip"]), model=setup["model"], overlap=32,
                       out=str(setup["root"] / "plan-only"))
    single = plan(MapConfig(**{**config.__dict__, "catalog": setup["parquet"]}))
    both = plan(MapConfig(**{**config.__dict__, "catalog": setup["copies"]}))
    assert {t.scene_id for t in both.tasks} == {"naip_newer"}
    assert sorted((t.row_off, t.col_off) for t in both.tasks) == sorted((t.row_off, t.col_off) for t in single.tasks)
    assert len(load_catalog(setup["copies"]).scenes) == 2


def test_lost_stac_items_in_the_aoi_make_the_plan_partial_and_a_cycle_does_not(setup, s3_env, tmp_path):
    """A 404 asset over the AOI is a lost scene (the run ends partial); a cycle loses nothing."""
    catalog = load_catalog(setup["parquet"])
    rows = catalog.scenes.set_index("id", drop=False)
    items = {"naip": [user_item(rows.loc[NAIP], rows.loc[NAIP]["uri"], "naip", "2021-07-18T17:00:00+00:00", 0.0),
                      user_item({**rows.loc[NAIP], "id": "gone"}, f"s3://{BUCKET}/nowhere/gone.tif", "naip",
                                "2022-07-18T17:00:00+00:00", 0.0)]}
    local = write_catalog(tmp_path / "stac", items)
    root = json.loads(local.read_text())
    root["links"].append({"rel": "child", "href": "./catalog.json"})
    local.write_text(json.dumps(root))
    p = plan(MapConfig(aoi=str(setup["aois"]["naip"]), catalog=str(local), model=setup["model"], overlap=32,
                       out=str(tmp_path / "out")))
    assert {t.scene_id for t in p.tasks} == {NAIP}  # the newer item is lost: its place falls to the other
    assert [f["scene_id"] for f in p.lost] == ["gone"]
    assert p.lost[0]["error"].startswith(f"STAC item 'gone' (s3://{BUCKET}/nowhere/gone.tif): not catalogued: "
                                         "not a readable GeoTIFF")
