"""STAC sources as catalogs: static catalogs on a local S3 (moto), a real STAC API server
(stac-fastapi-static, tests/scenes/stac_servers.py), stac-geoparquet, ``build_catalog --stac``."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pystac
import pytest
import shapely

from magseg_ray.errors import ConfigError, SceneError
from magseg_ray.map_region import DEMO_DIR
from magseg_ray.scenes import stac
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.scenes.select import StacSelect
from tests.scenes.stac_servers import StacApi, upload_tree, user_item, write_catalog

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "stac-tests"
GRID = ["id", "crs", "native_bounds", "width", "height", "gsd", "bands", "dtype", "nodata", "is_cog"]
WHEN = {"naip_43p7840_m92p4228": ("naip", "2021-07-18T17:00:00+00:00", 0.0),
        "synth_900": ("synth", "2024-01-15T03:30:00+00:00", 5.0),
        "synth_901": ("synth", "2024-01-15T03:30:00+00:00", 12.0)}


@pytest.fixture(scope="module")
def demo():
    return load_catalog(DEMO_DIR / "scenes").scenes


@pytest.fixture(scope="module")
def users(tmp_path_factory, s3_server, demo):
    """The demo scenes as a provider publishes them: COGs on S3 and a static catalog of them
    (catalog.json -> collections naip, synth -> items), on S3 and on disk."""
    root = tmp_path_factory.mktemp("users")
    scenes = s3_server.upload(DEMO_DIR / "scenes", BUCKET, "scenes")
    items = {}
    for scene in demo.to_dict("records"):
        collection, when, cloud = WHEN[scene["id"]]
        items.setdefault(collection, []).append(user_item(scene, f"{scenes}/{scene['id']}.tif", collection, when, cloud))
    local = write_catalog(root / "stac", items)
    return {"local": local, "s3": upload_tree(s3_server, root / "stac", BUCKET, "stac") + "/catalog.json"}


def test_a_static_catalog_on_s3_is_the_scenes_of_its_items(users, s3_server, demo):
    catalog = load_catalog(users["s3"], s3_server.store)
    assert catalog.failures.empty
    scenes = catalog.scenes
    pd.testing.assert_frame_equal(scenes[GRID], demo[GRID])
    assert shapely.equals_exact(scenes.geometry.values, demo.geometry.values, 1e-9).all()
    assert scenes["uri"].tolist() == [f"s3://{BUCKET}/scenes/{i}.tif" for i in demo["id"]]
    assert scenes["cloud_cover"].tolist() == [0.0, 5.0, 12.0] and scenes["rgb_bands"].tolist() == [[1, 2, 3]] * 3
    assert str(scenes["datetime"].iloc[0]) == "2021-07-18 17:00:00+00:00"  # the item's time (the file has none)


@pytest.mark.parametrize("select, bbox, ids", [
    (StacSelect(collection="synth"), None, ["synth_900", "synth_901"]),
    (StacSelect(datetime="../2022-01-01"), None, ["naip_43p7840_m92p4228"]),
    (StacSelect(query="eo:cloud_cover<10"), None, ["naip_43p7840_m92p4228", "synth_900"]),
    (StacSelect(query='{"op": ">=", "args": [{"property": "eo:cloud_cover"}, 10]}'), None, ["synth_901"]),
    (StacSelect(), (101.9, 12.9, 102.0001, 13.1), ["synth_900", "synth_901"]),
])
def test_collection_datetime_query_and_bbox_choose_items(users, s3_server, select, bbox, ids):
    assert load_catalog(users["s3"], s3_server.store, select, bbox).scenes["id"].tolist() == ids


def test_a_stac_api_search_pages_through_next_links_and_selects(users, s3_server, demo, monkeypatch):
    monkeypatch.setattr(stac, "SEARCH_PAGE", 1)  # one item a page: three pages, two `next` links
    with StacApi(users["local"]) as api:
        everything = load_catalog(f"{api.url}/search", s3_server.store)
        chosen = load_catalog(f"{api.url}/search", s3_server.store,
                              StacSelect(collection="synth", query="eo:cloud_cover<10"), (101.9, 12.9, 102.1, 13.1))
        landing = load_catalog(api.url, s3_server.store, StacSelect(datetime="2024-01-01/2024-12-31"))
        with pytest.raises(SceneError, match=r"/search: no STAC item matches \(collections synth, bbox \[0"):
            load_catalog(f"{api.url}/search", s3_server.store, StacSelect(collection="synth"), (0, 0, 1, 1))
    pd.testing.assert_frame_equal(everything.scenes[GRID], demo[GRID])
    assert chosen.scenes["id"].tolist() == ["synth_900"]
    assert landing.scenes["id"].tolist() == ["synth_900", "synth_901"]


def test_stac_geoparquet_reads_as_the_static_catalog(users, s3_server, tmp_path):
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    items = [i.to_dict() for i in pystac.Catalog.from_file(str(users["local"])).get_items(recursive=True)]
    to_parquet(parse_stac_items_to_arrow(items), tmp_path / "items.parquet")
    uri = s3_server.upload(tmp_path / "items.parquet", BUCKET, "geoparquet") + "/items.parquet"
    table = load_catalog(uri, s3_server.store).scenes
    static = load_catalog(users["s3"], s3_server.store).scenes
    pd.testing.assert_frame_equal(table, static)
    assert load_catalog(uri, s3_server.store, StacSelect(collection="naip")).scenes["id"].tolist() == [
        "naip_43p7840_m92p4228"]


def build_catalog_job():
    spec = importlib.util.spec_from_file_location("build_catalog_job", ROOT / "jobs" / "build_catalog.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("where", ["local", "s3"])
def test_build_catalog_writes_a_stac_collection_that_reads_back_to_the_same_scenes(where, s3_server, tmp_path,
                                                                                     monkeypatch, demo):
    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1",
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    out = str(tmp_path / "stac") if where == "local" else f"s3://{BUCKET}/built-{tmp_path.name}"
    s3_server.client().create_bucket(Bucket=BUCKET)
    assert build_catalog_job()([str(DEMO_DIR / "scenes"), "--out", str(tmp_path / "c.parquet"), "--stac", out]) == 0
    back = load_catalog(f"{out}/collection.json")
    pd.testing.assert_frame_equal(back.scenes, load_catalog(tmp_path / "c.parquet").scenes)
    assert back.scenes["labels_uri"].notna().all()  # sidecars travel as assets: training reads them too
    # and a STAC source indexes into GeoParquet
    assert build_catalog_job()([f"{out}/collection.json", "--out", str(tmp_path / "d.parquet"),
                                "--query", "eo:cloud_cover<0"]) == 2  # no scene has a cloud cover: none match
    assert build_catalog_job()([f"{out}/collection.json", "--out", str(tmp_path / "d.parquet")]) == 0
    pd.testing.assert_frame_equal(load_catalog(tmp_path / "d.parquet").scenes, back.scenes)


def test_bad_items_and_links_are_named_failures_and_the_rest_is_catalogued(s3_server, tmp_path, demo):
    """One good item (its image beside it, a relative href), an item with no GeoTIFF asset, an
    asset that 404s, a link to JSON that is not STAC, and a link back to the root (a cycle)."""
    rows = demo.set_index("id", drop=False)
    good = user_item(rows.loc["synth_900"], "./synth_900.tif", "mixed", "2024-01-15T03:30:00+00:00", 5.0)
    no_cog = user_item(rows.loc["synth_901"], "https://example.invalid/synth_901.jpg", "mixed", "2024-01-15T00:00:00",
                       5.0, key="preview", roles=("overview",), media_type=pystac.MediaType.JPEG)
    missing = user_item({**rows.loc["naip_43p7840_m92p4228"], "id": "gone"}, f"s3://{BUCKET}/nowhere/gone.tif",
                        "mixed", "2021-07-18T17:00:00+00:00", 0.0)
    root = write_catalog(tmp_path / "stac", {"mixed": [good, no_cog, missing]})
    collection = json.loads((tmp_path / "stac/mixed/collection.json").read_text())
    collection["links"] += [{"rel": "child", "href": "../catalog.json"}, {"rel": "child", "href": "./notes.json"}]
    (tmp_path / "stac/mixed/collection.json").write_text(json.dumps(collection))
    (tmp_path / "stac/mixed/notes.json").write_text(json.dumps({"title": "not STAC", "links": []}))
    (tmp_path / "stac/mixed/synth_900/synth_900.tif").write_bytes((DEMO_DIR / "scenes/synth_900.tif").read_bytes())
    uri = upload_tree(s3_server, tmp_path / "stac", BUCKET, f"mixed-{tmp_path.name}") + "/catalog.json"
    catalog = load_catalog(uri, s3_server.store)
    assert catalog.scenes["id"].tolist() == ["synth_900"]
    assert catalog.scenes["uri"].iloc[0] == uri.replace("catalog.json", "mixed/synth_900/synth_900.tif")
    reasons = dict(zip(catalog.failures["uri"], catalog.failures["reason"]))
    footprints = dict(zip(catalog.failures["uri"], catalog.failures["footprint"]))
    prefix = uri.removesuffix("/catalog.json")
    assert reasons[prefix + "/catalog.json"] == (
        f"catalog cycle: {prefix}/mixed/collection.json links back to {prefix}/catalog.json, already read")
    assert footprints[prefix + "/catalog.json"].is_empty  # nothing lost: a map stays complete
    assert reasons[prefix + "/mixed/notes.json"] == (
        f"linked from {prefix}/mixed/collection.json: {prefix}/mixed/notes.json: not STAC JSON (type None, "
        "stac_version None): name a STAC catalog.json, collection.json or item")
    assert footprints[prefix + "/mixed/notes.json"] is None  # unknown: a map it may cover is partial
    label = f"STAC item 'synth_901' ({prefix}/mixed/synth_901/synth_901.json)"
    assert reasons[label].startswith("no GeoTIFF asset with role data or visual (it has preview (image/jpeg; "
                                     "roles ['overview']), thumbnail (image/png; roles ['thumbnail'])")
    assert footprints[label].equals(rows.loc["synth_901"]["geometry"])
    gone = f"STAC item 'gone' (s3://{BUCKET}/nowhere/gone.tif)"
    assert reasons[gone].startswith("not a readable GeoTIFF") and footprints[gone] is not None
    # --asset by key; an asset no item has leaves nothing to map
    assert load_catalog(uri, s3_server.store, StacSelect(asset="visual")).scenes["id"].tolist() == ["synth_900"]
    with pytest.raises(SceneError, match=r"none of the 2 STAC items selected could be catalogued, e\.g\. STAC item "
                                         r"'synth_901' .*: no asset 'nope' by key or role \(it has preview, thumbnail\)"):
        load_catalog(uri, s3_server.store, StacSelect(asset="nope"), (101.9, 12.9, 102.1, 13.1))


def test_sources_that_are_not_stac_and_bad_selections_are_refused(tmp_path, s3_server):
    (tmp_path / "x.json").write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature"}]})[:-3])
    with pytest.raises(SceneError, match=r"x.json: not JSON \(.*\): name a STAC catalog.json"):
        load_catalog(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"type": "Feature", "geometry": None}))
    with pytest.raises(SceneError, match=r"y.json: not STAC JSON \(type 'Feature', stac_version None\)"):
        load_catalog(tmp_path / "y.json")
    with pytest.raises(SceneError, match=r"z.json: cannot read"):
        load_catalog(tmp_path / "z.json")
    with pytest.raises(ConfigError, match=r"--query 'cloud <<< 3' is not CQL2 text or JSON"):
        StacSelect(query="cloud <<< 3").cql2()
    with pytest.raises(ConfigError, match=r"--datetime 'last summer' is not an RFC 3339"):
        StacSelect(datetime="last summer").interval()
    with pytest.raises(ConfigError, match=r"--collection, --datetime, --query and --asset choose STAC items"):
        load_catalog(DEMO_DIR / "scenes", select=StacSelect(collection="naip"))
    with pytest.raises(SceneError, match=r"http://127.0.0.1:1/search: STAC search failed: "):
        load_catalog("http://127.0.0.1:1/search")


def test_https_assets_are_read_in_place_by_range_requests(users, s3_server, demo, tmp_path):
    """Providers publish assets at http(s) URLs (moto answers unsigned GETs at
    http://127.0.0.1:PORT/bucket/key): catalogued from their headers, chips read by range requests."""
    from magseg_ray.chips.read import read_chip
    from magseg_ray.chips.windows import ChipConfig, chip_windows

    rows = demo.set_index("id", drop=False)
    url = f"{s3_server.endpoint_url}/{BUCKET}/scenes/synth_900.tif"
    s3_server.client().put_object_acl(Bucket=BUCKET, Key="scenes/synth_900.tif", ACL="public-read")  # as open data
    write_catalog(tmp_path / "web", {"synth": [user_item(rows.loc["synth_900"], url, "synth", "2024-01-15T03:30:00", 5.0)]})
    scenes = load_catalog(tmp_path / "web/catalog.json", s3_server.store).scenes
    assert scenes["uri"].tolist() == [url]
    pd.testing.assert_frame_equal(scenes[GRID], demo[demo["id"] == "synth_900"][GRID].reset_index(drop=True))
    task = chip_windows(scenes, scenes.geometry.iloc[0], ChipConfig(128, 0))[5]
    sent = s3_server.sent_bytes
    web = read_chip(task, store=s3_server.store)
    assert s3_server.sent_bytes - sent < (DEMO_DIR / "scenes/synth_900.tif").stat().st_size / 2  # ranges, not the file
    local = read_chip(task.__class__(**{**task.as_dict(), "uri": str(DEMO_DIR / "scenes/synth_900.tif")}))
    assert (web.image == local.image).all() and (web.valid == local.valid).all()
