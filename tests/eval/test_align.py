import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box

from magseg_ray.errors import ConfigError, RasterInputError, SchemaError
from magseg_ray.eval.align import load_pair
from magseg_ray.masks.schemas import classes_from_instances

REPO = Path(__file__).resolve().parents[2]
SCENE = REPO / "tests/data/naip/naip_41p6497_m89p5929"
UTM = "EPSG:32616"
ORIGIN = (300_000.0, 4_600_040.0)  # west, north of the synthetic 40 m x 40 m grid at 1 m
FIELDS = [box(300_002, 4_600_020, 300_018, 4_600_038), box(300_018, 4_600_020, 300_036, 4_600_038)]
INST = np.zeros((40, 40), np.uint16)  # FIELDS as an instance raster
INST[2:20, 2:18], INST[2:20, 18:36] = 1, 2


def _job():
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tif(path, data, crs=UTM, transform=from_origin(*ORIGIN, 1, 1), tags=None):
    height, width = data.shape
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype=data.dtype)
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(**(tags or {}))
    return path


def write_fields(path, geoms=FIELDS, crs=UTM):
    gdf = gpd.GeoDataFrame({"field_id": range(1, len(geoms) + 1)}, geometry=list(geoms), crs=crs)
    if path.suffix == ".parquet":
        gdf.to_parquet(path)
    else:
        gdf.to_file(path)
    return path


def test_vector_truth_on_instance_raster_grid(tmp_path):
    pred = write_tif(tmp_path / "pred.tif", INST)
    pair = load_pair(pred, write_fields(tmp_path / "truth.gpkg"), "fields3")
    np.testing.assert_array_equal(pair.truth_instances, INST)
    np.testing.assert_array_equal(pair.truth_classes, classes_from_instances(INST, "fields3"))
    np.testing.assert_array_equal(pair.pred_classes, pair.truth_classes)
    assert pair.crs == UTM and pair.transform == from_origin(*ORIGIN, 1, 1)


def test_kind_from_dtype_or_tag(tmp_path):
    classes = classes_from_instances(INST, "fields3")
    truth = write_tif(tmp_path / "truth.tif", INST)
    as_uint8 = write_tif(tmp_path / "u8.tif", classes)
    as_tagged = write_tif(tmp_path / "tagged.tif", classes.astype(np.uint16), tags={"MAGSEG_KIND": "class"})
    for pred in (as_uint8, as_tagged):
        pair = load_pair(pred, truth, "fields3")
        np.testing.assert_array_equal(pair.pred_classes, classes)
        assert pair.pred_instances.max() == 2
    pair = load_pair(as_tagged, truth, "fields3", pred_kind="instance")
    np.testing.assert_array_equal(pair.pred_instances, classes)  # an explicit kind beats the tag


def test_vector_pred_in_other_crs_is_reprojected(tmp_path):
    truth = write_tif(tmp_path / "truth.tif", INST)
    pred = write_fields(tmp_path / "pred.gpkg", gpd.GeoSeries(FIELDS, crs=UTM).to_crs(4326), "EPSG:4326")
    pair = load_pair(pred, truth, "fields3")
    assert (pair.pred_instances == pair.truth_instances).mean() > 0.97


def test_raster_pred_in_other_crs_is_reprojected(tmp_path):
    fields = gpd.GeoSeries(FIELDS, crs=UTM).to_crs(3857)
    west, south, east, north = fields.total_bounds
    transform = from_origin(west - 1, north + 1, 0.5, 0.5)
    shape = (int((north - south) / 0.5) + 4, int((east - west) / 0.5) + 4)
    web = rasterize(zip(fields, (1, 2)), shape, transform=transform, dtype=np.uint16)
    pred = write_tif(tmp_path / "pred.tif", web, crs="EPSG:3857", transform=transform)
    pair = load_pair(pred, write_tif(tmp_path / "truth.tif", INST), "fields3")
    assert (pair.pred_instances == pair.truth_instances).mean() > 0.97


def test_two_vectors_default_to_one_metre_in_the_truths_crs(tmp_path):
    truth = write_fields(tmp_path / "truth.gpkg")
    pred = write_fields(tmp_path / "pred.parquet", gpd.GeoSeries(FIELDS, crs=UTM).to_crs(3857), "EPSG:3857")
    pair = load_pair(pred, truth, "fields3")
    assert pair.crs == UTM and pair.truth_instances.shape == (18, 34)
    np.testing.assert_array_equal(pair.truth_instances, INST[2:20, 2:36])
    assert (pair.pred_instances == pair.truth_instances).mean() > 0.97
    pair = load_pair(pred, truth, "fields3", resolution=0.5)  # in the truth's CRS units
    assert pair.truth_instances.shape == (36, 68)
    with pytest.raises(ConfigError, match="resolution must be positive"):
        load_pair(pred, truth, "fields3", resolution=0)


def test_a_truth_in_degrees_is_scored_at_one_metre_in_its_utm_zone(tmp_path):
    """Issue 22: two vector files, truth in EPSG:4326, and no --resolution."""
    degrees = gpd.GeoSeries(FIELDS, crs=UTM).to_crs(4326)
    truth = write_fields(tmp_path / "truth.gpkg", degrees, "EPSG:4326")
    pair = load_pair(write_fields(tmp_path / "pred.gpkg"), truth, "fields3")
    assert pair.crs == UTM and abs(pair.transform.a) == 1.0
    assert set(np.unique(pair.truth_instances)) == {0, 1, 2}
    assert (pair.pred_instances == pair.truth_instances).mean() > 0.95


def test_a_grid_too_coarse_for_the_truth_is_refused(tmp_path):
    """Issue 22: ``--resolution 1`` on a truth in degrees was a 1-pixel grid that scored 1.0."""
    degrees = gpd.GeoSeries(FIELDS, crs=UTM).to_crs(4326)
    truth = write_fields(tmp_path / "truth.gpkg", degrees, "EPSG:4326")
    pred = write_fields(tmp_path / "pred.gpkg")
    with pytest.raises(RasterInputError, match=r"truth.gpkg against .*pred.gpkg: the grid \(1 x 1 px at 1 degree "
                       r"\(EPSG:4326\)\) holds 0 of the 2 truth fields on it"):
        load_pair(pred, truth, "fields3", resolution=1)
    # a raster's grid too: one 100 m pixel whose centre misses both fields
    coarse = write_tif(tmp_path / "coarse.tif", np.ones((1, 1), np.uint8), transform=from_origin(299_950, 4_600_100, 100, 100))
    with pytest.raises(RasterInputError, match=r"\(1 x 1 px at 100 metre \(EPSG:32616\)\) holds 0 of the 2"):
        load_pair(coarse, write_fields(tmp_path / "truth_utm.gpkg"), "fields3")


def test_a_grid_like_too_coarse_for_a_raster_truth_is_refused(tmp_path):
    """Issue 38: --grid-like a 1-degree raster against a raster truth scored mean IoU 1.0."""
    pred, truth = write_tif(tmp_path / "pred.tif", INST), write_tif(tmp_path / "truth.tif", INST)
    lon, lat = rasterio.warp.transform(UTM, "EPSG:4326", [ORIGIN[0]], [ORIGIN[1]])
    degree = write_tif(tmp_path / "degree.tif", np.zeros((1, 1), np.uint8), crs="EPSG:4326",
                       transform=from_origin(math.floor(lon[0]), math.ceil(lat[0]), 1, 1))
    for kind in ("instance", "class"):
        with pytest.raises(RasterInputError, match=r"truth.tif against .*pred.tif: the grid \(1 x 1 px at 1 degree "
                           r"\(EPSG:4326\)\) holds 0 of the 2 truth fields on it"):
            load_pair(pred, truth, "fields3", truth_kind=kind, grid_like=degree)
    pair = load_pair(pred, truth, "fields3", grid_like=pred)  # the truth's own grid still scores
    np.testing.assert_array_equal(pair.truth_instances, INST)


def test_an_empty_truth_warns(tmp_path):
    truth = write_tif(tmp_path / "truth.tif", np.zeros((40, 40), np.uint16))
    pair = load_pair(write_fields(tmp_path / "pred.gpkg"), truth, "fields3")
    assert pair.truth_instances.max() == 0 and pair.pred_instances.max() == 2
    assert len(pair.warnings) == 1 and "truth.tif holds no field on the scored pixels" in pair.warnings[0]
    assert load_pair(write_fields(tmp_path / "p.gpkg"), write_tif(tmp_path / "t.tif", INST), "fields3").warnings == ()


def _aoi_of(geom, path):
    """``geom`` (UTM) written as a GeoJSON AOI; returns the AOI as map_region reads it."""
    from magseg_ray.chips.windows import load_aoi

    path.write_text(gpd.GeoSeries([geom], crs=UTM).to_crs(4326).to_json())
    return load_aoi(path)


def test_an_aoi_limits_the_scored_pixels(tmp_path):
    """A map of an AOI holding field 1 only, against the whole truth: field 2 is not a miss."""
    pred = write_fields(tmp_path / "fields.gpkg", FIELDS[:1])
    truth = write_fields(tmp_path / "truth.gpkg")
    whole = load_pair(pred, truth, "fields3")
    assert set(np.unique(whole.truth_instances)) == {1, 2}
    aoi = _aoi_of(box(300_000, 4_600_010, 300_017, 4_600_040), tmp_path / "aoi.geojson")
    part = load_pair(pred, truth, "fields3", aoi=aoi)
    np.testing.assert_array_equal(part.truth_instances, part.pred_instances)
    assert set(np.unique(part.truth_instances)) - {0} == {1}
    far = _aoi_of(box(310_000, 4_600_000, 310_020, 4_600_020), tmp_path / "far.geojson")
    with pytest.raises(RasterInputError, match="AOI and .*truth.gpkg do not overlap"):
        load_pair(pred, truth, "fields3", aoi=far)


def test_grid_like_scores_on_a_named_rasters_grid(tmp_path):
    like = write_tif(tmp_path / "like.tif", np.zeros((50, 60), np.uint8), transform=from_origin(299_990, 4_600_045, 1, 1))
    pair = load_pair(write_fields(tmp_path / "pred.gpkg"), write_fields(tmp_path / "truth.gpkg"), "fields3",
                     grid_like=like)
    assert pair.truth_instances.shape == (50, 60) and pair.transform == from_origin(299_990, 4_600_045, 1, 1)
    np.testing.assert_array_equal(pair.truth_instances[5:45, 10:50], INST)


def _run_folder(root, aoi_path, aoi):
    """The files of a map_region run that say which AOI it mapped (run.json, summary.json)."""
    from magseg_ray.chips.windows import aoi_fingerprint

    root.mkdir()
    (root / "run.json").write_text(json.dumps({"aoi_sha256": aoi_fingerprint(aoi)}))
    (root / "summary.json").write_text(json.dumps({"aoi": str(aoi_path)}))
    return root


def test_run_aoi_finds_the_aoi_of_the_run_that_wrote_a_map(tmp_path):
    from magseg_ray.eval.align import run_aoi

    aoi_path = tmp_path / "aoi.geojson"
    aoi = _aoi_of(box(300_000, 4_600_010, 300_017, 4_600_040), aoi_path)
    run = _run_folder(tmp_path / "run", aoi_path, aoi)
    (run / "masks").mkdir()
    for pred in (run / "fields.gpkg", run / "masks" / "scene.tif"):
        found, where = run_aoi(pred)
        assert found.equals(aoi) and where == str(aoi_path)
    assert run_aoi(tmp_path / "elsewhere.gpkg") is None
    _aoi_of(box(300_000, 4_600_010, 300_030, 4_600_040), aoi_path)  # the AOI file changed since the run
    with pytest.raises(RasterInputError, match="changed since the run: pass the AOI it was mapped with"):
        run_aoi(run / "fields.gpkg")


def test_missing_file(tmp_path):
    with pytest.raises(RasterInputError, match="no such file"):
        load_pair(tmp_path / "nope.tif", write_tif(tmp_path / "truth.tif", INST), "fields3")


def test_no_overlap(tmp_path):
    far = [box(310_000, 4_600_000, 310_020, 4_600_020)]
    with pytest.raises(RasterInputError, match="do not overlap"):
        load_pair(write_fields(tmp_path / "pred.gpkg", far), write_tif(tmp_path / "truth.tif", INST), "fields3")


def test_missing_crs(tmp_path):
    truth = write_tif(tmp_path / "truth.tif", INST)
    with pytest.raises(RasterInputError, match="no CRS"):
        load_pair(write_tif(tmp_path / "pred.tif", INST, crs=None), truth, "fields3")
    with pytest.raises(RasterInputError, match="no CRS"):
        load_pair(write_fields(tmp_path / "pred.parquet", crs=None), truth, "fields3")


def test_invalid_geometry(tmp_path):
    bowtie = Polygon([(300_002, 4_600_002), (300_010, 4_600_010), (300_010, 4_600_002), (300_002, 4_600_010)])
    pred = write_fields(tmp_path / "pred.gpkg", [FIELDS[0], bowtie])
    truth = write_tif(tmp_path / "truth.tif", INST)
    with pytest.raises(RasterInputError, match="1 invalid geometries, e.g. feature #1 .*--make-valid"):
        load_pair(pred, truth, "fields3")
    repaired = load_pair(pred, truth, "fields3", make_valid=True)  # the bowtie becomes two triangles
    assert repaired.pred_instances.max() == 2 and (repaired.pred_instances == 2).sum() > 0


def test_class_raster_outside_schema(tmp_path):
    bad = np.full((40, 40), 5, np.uint8)
    with pytest.raises(SchemaError, match="pred.tif"):
        load_pair(write_tif(tmp_path / "pred.tif", bad), write_tif(tmp_path / "truth.tif", INST), "fields3")


def test_job_on_real_scene(tmp_path):
    out = tmp_path / "metrics.json"
    argv = ["--pred", f"{SCENE}.labels.tif", "--truth", f"{SCENE}.fields.gpkg", "--out", str(out)]
    assert _job().main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["instance"]["field"]["mean_iou"] > 0.9
    cli = [sys.executable, "jobs/evaluate.py", *argv[:4]]
    run = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["instance"] == metrics["instance"]


def test_job_reports_where_object_f1_is_lost(tmp_path):
    """Field 2 of the truth drawn in two halves: two split pieces and one split field, and a picture."""
    pred = INST.copy()
    pred[2:20, 27:36] = 3
    out, picture = tmp_path / "metrics.json", tmp_path / "errors.png"
    argv = ["--pred", str(write_tif(tmp_path / "pred.tif", pred, tags={"MAGSEG_KIND": "instance"})),
            "--truth", str(write_fields(tmp_path / "truth.gpkg")), "--out", str(out), "--picture", str(picture),
            "--small-m2", "50"]
    assert _job().main(argv) == 0
    errors = json.loads(out.read_text())["errors"]
    assert (errors["tp"], errors["fp"], errors["fn"], errors["pieces"]) == (1, 2, 1, 3)
    assert errors["false_positives"]["split"] == {"<100": 0, "100-500": 2, "500-2000": 0, "2000-10000": 0,
                                                  ">=10000": 0, "total": 2}
    assert errors["false_negatives"]["split"]["total"] == 1 and errors["small_m2"] == 50
    assert picture.stat().st_size > 0


def test_job_reports_user_errors(tmp_path, capsys):
    assert _job().main(["--pred", str(tmp_path / "nope.tif"), "--truth", f"{SCENE}.fields.gpkg"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_map_of_part_of_a_scene_is_scored_on_that_part(tmp_path):
    """A class map with nodata outside its AOI (what map_region writes): the truth is blanked there."""
    from magseg_ray.eval.metrics import evaluate_masks

    data = Path(__file__).resolve().parents[1] / "data" / "naip"
    with rasterio.open(data / "naip_41p6497_m89p5929.labels.tif") as src:
        classes = classes_from_instances(src.read(1), "fields3").astype(np.uint8)
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, nodata=255)
    classes[:, : classes.shape[1] // 2] = 255  # only the east half was mapped
    pred = tmp_path / "half.tif"
    with rasterio.open(pred, "w", **profile) as dst:
        dst.write(classes, 1)
    pair = load_pair(pred, data / "naip_41p6497_m89p5929.fields.gpkg", "fields3")
    assert not pair.truth_instances[:, : classes.shape[1] // 2].any()
    field = evaluate_masks(pair.pred_classes, pair.truth_classes, "fields3", pair.pred_instances,
                           pair.truth_instances)["instance"]["field"]
    assert field["mean_iou"] > 0.95  # the fields the map cut at its edge are compared with the truth cut there


def test_job_refuses_the_one_degree_grid_of_issue_22(tmp_path, capsys):
    degrees = gpd.GeoSeries(FIELDS, crs=UTM).to_crs(4326)
    truth = write_fields(tmp_path / "truth.gpkg", degrees, "EPSG:4326")
    pred = write_fields(tmp_path / "pred.gpkg")
    assert _job().main(["--pred", str(pred), "--truth", str(truth), "--resolution", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truth.gpkg against" in err and "holds 0 of the 2 truth fields" in err
    assert _job().main(["--pred", str(pred), "--truth", str(truth)]) == 0  # default: 1 m in UTM 16N
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["instance"]["field"]["n_truth"] == 2 and metrics["object"]["field"]["f1"] > 0.9


def test_job_warns_on_an_empty_truth(tmp_path, capsys):
    truth = write_tif(tmp_path / "truth.tif", np.zeros((40, 40), np.uint16))
    assert _job().main(["--pred", str(write_fields(tmp_path / "pred.gpkg")), "--truth", str(truth)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: ") and "holds no field" in captured.err
    metrics = json.loads(captured.out)
    assert len(metrics["warnings"]) == 1 and metrics["instance"]["field"]["mean_iou"] is None


def test_job_scores_a_runs_fields_on_the_runs_aoi(tmp_path, capsys):
    """Issue 22: fields.gpkg of an AOI run against a whole-scene truth counted the fields outside as missed."""
    aoi_path = tmp_path / "aoi.geojson"
    aoi = _aoi_of(box(300_000, 4_600_010, 300_017, 4_600_040), aoi_path)
    run = _run_folder(tmp_path / "run", aoi_path, aoi)
    pred = write_fields(run / "fields.gpkg", FIELDS[:1])  # the run mapped field 1 perfectly
    truth = str(write_fields(tmp_path / "truth.gpkg"))
    assert _job().main(["--pred", str(pred), "--truth", truth]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["aoi"] == str(aoi_path)
    assert metrics["instance"]["field"]["n_truth"] == 1 and metrics["object"]["field"]["recall"] == 1.0
    other = tmp_path / "other.geojson"  # --aoi wins over the run's
    _aoi_of(box(300_000, 4_600_000, 300_040, 4_600_040), other)
    assert _job().main(["--pred", str(pred), "--truth", truth, "--aoi", str(other)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["aoi"] == str(other) and metrics["object"]["field"]["recall"] == 0.5


def test_job_grows_a_class_maps_fields_from_cores_with_seed_px(tmp_path, capsys):
    """Two fields whose boundary a map drew with a gap: one field with each interior component a
    field, both found with --seed-px (the map's fields step), the truth's fields unchanged."""
    fields = [box(300_000, 4_599_960, 300_040, 4_600_040), box(300_040, 4_599_960, 300_080, 4_600_040)]
    truth = str(write_fields(tmp_path / "truth.gpkg", fields))
    classes = np.ones((80, 80), np.uint8)
    classes[:, 38:42] = 2
    classes[36:44, 38:42] = 1  # the gap
    pred = str(write_tif(tmp_path / "pred.tif", classes))
    scores = []
    for seed in ("0", "12"):
        assert _job().main(["--pred", pred, "--truth", truth, "--seed-px", seed]) == 0
        scores.append(json.loads(capsys.readouterr().out)["instance"]["field"])
    assert scores[0]["n_pred"] == 1 and scores[1]["n_pred"] == 2
    assert scores[1]["one_to_one_mean_iou"] > 0.9 > 0.6 > scores[0]["one_to_one_mean_iou"]
    assert scores[0]["n_truth"] == scores[1]["n_truth"] == 2
    for bad in ("-2", "nan"):
        assert _job().main(["--pred", pred, "--truth", truth, "--seed-px", bad]) == 2
        assert capsys.readouterr().err.startswith(f"error: seed_px {float(bad)}: must be >= 0")
    assert _job().main(["--pred", pred, "--truth", truth]) == 0  # outside a run folder: each component a field
    assert json.loads(capsys.readouterr().out)["seed_px"] == 0


def test_job_scores_a_runs_class_raster_with_the_runs_core_depth(tmp_path, capsys):
    from magseg_ray.eval.align import run_seed_px

    aoi_path = tmp_path / "aoi.geojson"
    run = _run_folder(tmp_path / "run", aoi_path, _aoi_of(box(300_000, 4_599_960, 300_080, 4_600_040), aoi_path))
    (run / "masks").mkdir()
    classes = np.ones((80, 80), np.uint8)
    classes[:, 38:42] = 2
    classes[36:44, 38:42] = 1  # a gap in the boundary between two fields
    pred = str(write_tif(run / "masks" / "scene.tif", classes))
    truth = str(write_fields(tmp_path / "truth.gpkg", [box(300_000, 4_599_960, 300_040, 4_600_040),
                                                       box(300_040, 4_599_960, 300_080, 4_600_040)]))
    assert run_seed_px(pred) is None  # a run that predates the setting
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "seed_px": 12}))
    assert run_seed_px(pred) == 12
    assert _job().main(["--pred", pred, "--truth", truth]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["seed_px"] == 12 and record["instance"]["field"]["n_pred"] == 2


def test_a_runs_edge_split_needs_the_scene_image_and_says_so_without_it(tmp_path):
    from magseg_ray.eval.align import read_image
    from magseg_ray.fields.rules import FieldRules

    truth = np.zeros((60, 100), np.uint16)
    truth[5:55, 5:50], truth[5:55, 50:95] = 1, 2  # two 45 x 50 px fields side by side
    classes = (truth > 0).astype(np.uint8)  # a map that never drew their shared edge: one field
    image = np.full((60, 100, 3), 120, np.uint8)
    image[truth == 1], image[truth == 2] = (60, 100, 40), (130, 160, 80)
    pred = write_tif(tmp_path / "pred.tif", classes, tags={"MAGSEG_KIND": "class"})
    truth_path = write_tif(tmp_path / "truth.tif", truth)
    with rasterio.open(tmp_path / "image.tif", "w", driver="GTiff", height=60, width=100, count=3, dtype="uint8",
                       crs=UTM, transform=from_origin(*ORIGIN, 1, 1)) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    assert (read_image(tmp_path / "image.tif") == image).all()
    rules = FieldRules(edge_quantile=0.85, edge_sigma_m=1.0, edge_depth_m=8.0, edge_core_m2=500.0)
    without = load_pair(pred, truth_path, "fields3", rules=rules)
    assert len(np.unique(without.pred_instances[without.pred_instances > 0])) == 1
    assert any("edge split" in w for w in without.warnings)
    split = load_pair(pred, truth_path, "fields3", rules=rules, image=read_image(tmp_path / "image.tif"))
    assert len(np.unique(split.pred_instances[split.pred_instances > 0])) == 2 and not split.warnings
    with pytest.raises(RasterInputError, match="missing.tif"):
        read_image(tmp_path / "missing.tif")
    # the job, on a run folder whose summary holds these rules: --image makes its fields as the run did
    (tmp_path / "run" / "masks").mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"seed_px": 0.0, "field_rules": rules.__dict__}))
    pred = write_tif(tmp_path / "run" / "masks" / "pred.tif", classes, tags={"MAGSEG_KIND": "class"})
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoSeries([box(ORIGIN[0], ORIGIN[1] - 60, ORIGIN[0] + 100, ORIGIN[1])], crs=UTM).to_crs(4326).to_file(aoi)
    argv = ["--pred", str(pred), "--truth", str(truth_path), "--aoi", str(aoi)]
    for extra, pieces, warned in (([], 1, True), (["--image", str(tmp_path / "image.tif")], 2, False)):
        out = tmp_path / f"metrics{pieces}.json"
        assert _job().main([*argv, *extra, "--out", str(out)]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["errors"]["pieces"] == pieces and bool(metrics["warnings"]) == warned
