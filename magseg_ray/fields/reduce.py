"""The reducer: finished chips -> scene class rasters -> field polygons -> the run's map files.

One Ray task per scene stitches, polygonizes and writes that scene's final fields, returning only
its seam pieces and a few numbers; the driver merges the seam pieces and writes the GeoPackage,
the preview and the summary. See :mod:`magseg_ray.map_region` for the whole flow.
"""

from __future__ import annotations

from dataclasses import asdict

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from magseg_ray.fields.seams import merge_pieces, seams, split_at_seams, tolerance_degrees
from magseg_ray.scenes.overlap import owned_areas
from magseg_ray.fields.write import read_fields, to_fiboa, write_geopackage, write_partitions
from magseg_ray.masks.schemas import NO_DATA
from magseg_ray.run_files import RunFiles, finished_chips

PARTIAL = "fields.partial"
"""Where a reduce writes its partitions before they replace ``fields/``."""


def reduce_scene(scene: dict, chip_ids: list[str], owned, seam, files_root: str, store, chip, prompt,
                 simplify_px: float, min_field_px: int, seed_px: float, degrees: float, rules=None,
                 attributes: tuple = (), read=None) -> dict:
    """Stitch one scene, write its class raster and final fields; return its seam pieces and stats.
    ``attributes``: chip attributes (:func:`~magseg_ray.run_files.encode_chip`) each field takes from its chip;
    ``read``: how the edge split reads the scene's pixels (the run's :class:`~magseg_ray.chips.read.ReadConfig`)."""
    from magseg_ray.chips.windows import scene_transform
    from magseg_ray.fields.polygons import scene_fields
    from magseg_ray.fields.rules import FieldRules
    from magseg_ray.masks.schemas import get_schema
    from magseg_ray.stitch.mosaic import stitch_scene, write_mask

    files = RunFiles(files_root, store)
    schema = get_schema(prompt.schema)
    row = pd.Series(scene)
    transform = scene_transform(row)
    classes, confidence, patches = stitch_scene(files, chip_ids, int(row["height"]), int(row["width"]), chip, prompt.patch_size)
    write_mask(files, f"masks/{row['id']}.tif", classes, transform, row["crs"], schema)
    rules = rules or FieldRules()
    image = None
    if rules.edge_quantile:  # the edge split reads the scene's pixels, whole
        from magseg_ray.chips.read import ReadConfig, read_window

        image, _ = read_window(row["uri"], 0, 0, classes.shape[0], classes.shape[1], read or ReadConfig(), store=store,
                               name=f"scene {row['id']} (the edge split of its fields)")
    fields = scene_fields(classes, confidence, transform, row["crs"], schema, simplify_px, min_field_px, seed_px,
                          rules, image)
    fields["scene_id"] = row["id"]
    if attributes:
        fields = _chip_columns(fields, files, chip_ids, transform, row["crs"], chip, attributes)
    tolerance = tolerance_degrees(float(row["gsd"]))
    final, pieces = split_at_seams(fields, owned, seam, tolerance)
    ids = [f"{row['id']}-{int(i):06d}" for i in final["instance"]]
    datetimes = {row["id"]: row.get("datetime")}
    class_name = schema.classes[schema.field_classes[0]].name
    final = to_fiboa(final, ids, class_name, datetimes, attributes)
    write_partitions(files, PARTIAL, final, row["id"], degrees)
    mapped_px = _mapped_pixels(classes, owned, transform, row["crs"])
    return {"scene_id": row["id"], "pieces": pieces, "fields": len(final), "patches": patches,
            "mapped_km2": mapped_px * float(row["gsd"]) ** 2 / 1e6, "tolerance": tolerance,
            "class_name": class_name, "datetime": row.get("datetime")}


def _chip_columns(fields: gpd.GeoDataFrame, files: RunFiles, chip_ids: list[str], transform, crs, chip,
                  attributes: tuple) -> gpd.GeoDataFrame:
    """Each field's ``attributes`` from the chip that owns a point inside it (its representative point,
    by the overlap rule): a GeoSeg object's query, phrase, route and score are its chip's."""
    from magseg_ray.run_files import chip_attributes
    from magseg_ray.stitch.mosaic import owner_chips

    points = fields.geometry.representative_point().to_crs(crs)
    cols, rows = ~transform @ (points.x.to_numpy(), points.y.to_numpy())
    owners = owner_chips(chip_ids, np.floor(rows).astype(int), np.floor(cols).astype(int), chip)
    values = {c: chip_attributes(files, c) for c in set(owners) if c}
    for name in attributes:
        fields[name] = [values.get(o, {}).get(name) for o in owners]
    return fields


def _mapped_pixels(classes, owned, transform, crs: str) -> int:
    """Mapped pixels whose centres lie in the part of the AOI the scene owns (``owned``, EPSG:4326).
    Chips answer every pixel the AOI touches, so its edge pixels are partly outside; counted by
    centre, the scenes' mapped areas add up to at most the AOI's."""
    from rasterio.features import geometry_mask

    local = gpd.GeoSeries([owned], crs="EPSG:4326").to_crs(crs).iloc[0]
    if local.is_empty:
        return 0
    inside = geometry_mask([local], classes.shape, transform, invert=True)
    return int(((classes != NO_DATA) & inside).sum())


def _aoi_km2(aoi) -> float:
    from magseg_ray.fields.polygons import measure

    parts = gpd.GeoDataFrame(geometry=list(shapely.get_parts(aoi)), crs="EPSG:4326")
    return float(measure(parts)["metrics:area"].sum() / 1e6)


def reduce_run(plan, files: RunFiles, store, failures: list[dict]) -> dict:
    """Reduce every scene with finished chips, merge seams, write the map files; return the summary."""
    import ray

    from magseg_ray.fields.preview import write_preview

    cfg = plan.config
    done = finished_chips(files)
    by_scene: dict[str, list[str]] = {}
    for t in plan.tasks:
        if t.chip_id in done:
            by_scene.setdefault(t.scene_id, []).append(t.chip_id)
    scenes = plan.scenes[plan.scenes["id"].isin(list(by_scene))]
    owned = owned_areas(scenes, plan.aoi)
    seam = seams(owned, {s: tolerance_degrees(float(g)) for s, g in zip(scenes["id"], scenes["gsd"])})
    files.remove_tree(PARTIAL)
    task = ray.remote(num_cpus=0.5)(reduce_scene)
    read = cfg.read_config(plan.card) if plan.rules.edge_quantile else None  # the chips' bands and bit depth
    refs = []
    for scene in scenes.to_dict("records"):
        sid = scene["id"]
        scene = {k: v for k, v in scene.items() if k != "geometry"}
        refs.append(task.remote(scene, by_scene[sid], owned[sid], seam[sid], files.root, store,
                                plan.chip, plan.prompt, cfg.simplify_px, cfg.min_field_px, plan.seed_px,
                                cfg.partition_degrees, plan.rules, plan.chip_attributes, read))
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except Exception as e:  # one scene's reduce failing must not lose the others
            failures.append({"chip_id": None, "scene_id": None, "error": f"reduce: {e}"})
    pieces = [r["pieces"] for r in results if len(r["pieces"])]
    merged_count = 0
    if pieces:
        tolerance = max(r["tolerance"] for r in results)
        all_pieces = pd.concat(pieces, ignore_index=True)
        merged = merge_pieces(gpd.GeoDataFrame(all_pieces, geometry="geometry", crs="EPSG:4326"), tolerance)
        merged_count = len(all_pieces) - len(merged)
        ids = [f"seam-{i:06d}" for i in range(len(merged))]
        datetimes = {r["scene_id"]: r["datetime"] for r in results}
        write_partitions(files, PARTIAL, to_fiboa(merged, ids, results[0]["class_name"], datetimes, plan.chip_attributes), "seams",
                         cfg.partition_degrees)
    files.remove_tree("fields")
    if files.scheme == "file":
        import os

        if os.path.isdir(files.uri(PARTIAL)):
            os.replace(files.uri(PARTIAL), files.uri("fields"))
    else:  # object stores have no rename: copy, then drop the partial copy
        for rel in files.listdir(PARTIAL):
            files.write("fields" + rel[len(PARTIAL):], files.read(rel))
        files.remove_tree(PARTIAL)
    fields = read_fields(files)
    write_geopackage(files, "fields.gpkg", fields)
    files.write_with("preview.png", lambda path: write_preview(
        path, plan.scenes, owned, fields, store, title=f"{len(fields)} fields, {cfg.aoi}"))
    return {"aoi": cfg.aoi, "out": files.root, "seed_px": plan.seed_px, "field_rules": asdict(plan.rules) if plan.rules else None, "aoi_km2": round(_aoi_km2(plan.aoi), 4),
            "mapped_km2": round(float(sum(r["mapped_km2"] for r in results)), 4), "fields": len(fields),
            "fields_merged_at_scene_seams": merged_count, "scenes": len(results),
            "patches": int(sum(r["patches"] for r in results)),
            "field_area_km2": round(float(fields["metrics:area"].sum() / 1e6), 4) if len(fields) else 0.0}

