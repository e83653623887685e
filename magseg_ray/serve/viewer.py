"""``GET /map``: a MapLibre GL JS viewer of the server it is served from, and the vendored library.

The page shows three layers over a plain background, each with a toggle: the scenes' imagery
(``imagery/{z}/{x}/{y}.png``), the class overlay (``tiles/{z}/{x}/{y}.png``) with its legend, and
the field polygons (``tiles/{z}/{x}/{y}.geojson`` of the tiles in view, fetched when the view
settles, merged into one GeoJSON source, outlined without the tile edges the server cut them at, so a
field that spans tiles reads as one); clicking a field opens a popup with its measures. Pan,
zoom and the URL hash (``#zoom/lat/lon``, so a link or a screenshot command opens a given place)
are MapLibre's own. Tile URLs come from ``tilejson.json``, which carries the page's ``?key=``.

MapLibre GL JS (:data:`MAPLIBRE_VERSION`, BSD-3-Clause) is vendored under ``static/maplibre-gl/``
(see its ``VENDOR.md``) and served by :func:`static_file` at ``/static/...``: nothing comes from a
CDN. For headless tests the page keeps counters on ``document.body.dataset``: ``classTiles`` and
``imageryTiles`` (distinct tiles loaded), ``fields`` (features on the map), ``drawn`` (distinct
fields whose outline is drawn in view, the status line's count), ``geojsonTiles`` (GeoJSON tiles
answered), ``errors``, and ``idle`` (1 once the map has rendered with every tile in).
"""

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
"""Web assets served at ``/static/`` (package data)."""
MAPLIBRE_VERSION = "5.24.1"
"""The vendored MapLibre GL JS release (``static/maplibre-gl/``)."""
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".md": "text/markdown"}
"""Content types of the files under :data:`STATIC`."""


def static_file(path: str) -> tuple[bytes, str] | None:
    """``(content, media type)`` of a file under :data:`STATIC`, or None if there is none (paths that
    leave the folder included)."""
    target = (STATIC / path).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file() or target.suffix not in MEDIA_TYPES:
        return None
    return target.read_bytes(), MEDIA_TYPES[target.suffix]


MAP_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>magseg-ray fields</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="static/maplibre-gl/maplibre-gl.css">
<script src="static/maplibre-gl/maplibre-gl.js"></script>
<style>
html, body { margin: 0; height: 100%; font: 13px sans-serif; }
#map { position: absolute; inset: 0; }
#panel { position: absolute; top: 8px; left: 8px; background: #fffe; padding: 6px 8px; border-radius: 4px;
         box-shadow: 0 1px 4px #0004; z-index: 2; }
#panel label { display: block; }
#legend span { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 6px; border: 1px solid #0006; }
.maplibregl-popup-content table td:first-child { color: #555; padding-right: 8px; }
</style></head>
<body>
<div id="map"></div>
<div id="panel">
<label><input type="checkbox" id="show-imagery" checked> imagery</label>
<label><input type="checkbox" id="show-classes" checked> classes</label>
<label><input type="checkbox" id="show-fields" checked> fields</label>
<div id="legend"></div><div id="status"></div></div>
<script>
"use strict";
const stats = {classTiles: new Set(), imageryTiles: new Set(), geojsonTiles: 0, fields: 0, drawn: 0, errors: 0};
function report(note) {
  const d = document.body.dataset;
  d.classTiles = stats.classTiles.size; d.imageryTiles = stats.imageryTiles.size;
  d.geojsonTiles = stats.geojsonTiles; d.fields = stats.fields; d.drawn = stats.drawn; d.errors = stats.errors;
  document.getElementById("status").textContent = note || `${stats.drawn} fields in view`;
}
const key = new URLSearchParams(location.search).get("key");
const headers = key ? {"X-API-Key": key} : {};

// the web-mercator tiles of zoom z over a bounding box
function tilesOver(b, z) {
  const n = 2 ** z, x = lon => Math.floor((lon + 180) / 360 * n);
  const y = lat => { const s = Math.sin(lat * Math.PI / 180);
    return Math.floor((0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * n); };
  const out = [], clamp = v => Math.max(0, Math.min(n - 1, v));
  for (let ty = clamp(y(b.getNorth())); ty <= clamp(y(b.getSouth())); ty++)
    for (let tx = clamp(x(b.getWest())); tx <= clamp(x(b.getEast())); tx++) out.push([tx, ty]);
  return out;
}
// a tile's [west, south, east, north] in degrees
function tileBounds(z, x, y) {
  const n = 2 ** z, lon = v => v / n * 360 - 180;
  const lat = v => Math.atan(Math.sinh(Math.PI * (1 - 2 * v / n))) * 180 / Math.PI;
  return [lon(x), lat(y + 1), lon(x + 1), lat(y)];
}
// a field's outline without the edges of the tile the server cut it to: a field that spans tiles
// is drawn as one outline, not as one box per tile
function outline(feature, [w, s, e, n]) {
  const near = (a, b) => Math.abs(a - b) < 1e-9;
  const cut = (a, b) => [[0, w], [0, e], [1, s], [1, n]].some(([i, v]) => near(a[i], v) && near(b[i], v));
  const g = feature.geometry, lines = [];
  for (const ring of (g.type === "Polygon" ? [g.coordinates] : g.coordinates).flat()) {
    let line = [ring[0]];
    for (let i = 1; i < ring.length; i++) {
      if (cut(ring[i - 1], ring[i])) { if (line.length > 1) lines.push(line); line = [ring[i]]; }
      else line.push(ring[i]);
    }
    if (line.length > 1) lines.push(line);
  }
  return {type: "Feature", properties: feature.properties, geometry: {type: "MultiLineString", coordinates: lines}};
}

fetch("tilejson.json" + location.search, {headers}).then(r => r.json()).then(tj => {
  const legend = document.getElementById("legend");
  for (const [name, colour] of Object.entries(tj.legend))
    legend.insertAdjacentHTML("beforeend", `<span style="background:${colour}"></span>${name}`);
  const bounds = tj.bounds, raster = {type: "raster", tileSize: 256, bounds};
  const map = new maplibregl.Map({
    container: "map", hash: true, attributionControl: false,
    center: tj.center.slice(0, 2), zoom: tj.center[2], maxZoom: tj.maxzoom,
    style: {version: 8, sources: {
        imagery: {...raster, tiles: tj.imagery, maxzoom: tj.maxzoom},
        classes: {...raster, tiles: tj.tiles, minzoom: tj.minzoom, maxzoom: tj.maxzoom},
        fields: {type: "geojson", data: {type: "FeatureCollection", features: []}},
        outlines: {type: "geojson", data: {type: "FeatureCollection", features: []}}},
      layers: [
        {id: "background", type: "background", paint: {"background-color": "#1d1f21"}},
        {id: "imagery", type: "raster", source: "imagery"},
        {id: "classes", type: "raster", source: "classes", paint: {"raster-opacity": 0.55}},
        {id: "fields-fill", type: "fill", source: "fields", paint: {"fill-color": "#00e5ff", "fill-opacity": 0.08}},
        {id: "fields-line", type: "line", source: "outlines", paint: {"line-color": "#00e5ff", "line-width": 1.5}}]}});
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  window.fieldMap = map;

  const toggles = {"show-imagery": ["imagery"], "show-classes": ["classes"], "show-fields": ["fields-fill", "fields-line"]};
  for (const [box, layers] of Object.entries(toggles))
    document.getElementById(box).onchange = e => layers.forEach(
      l => map.setLayoutProperty(l, "visibility", e.target.checked ? "visible" : "none"));

  map.on("sourcedata", e => {
    if (!e.tile || e.tile.state !== "loaded") return;
    const id = e.tile.tileID.canonical.key;
    if (e.sourceId === "classes") stats.classTiles.add(id);
    if (e.sourceId === "imagery") stats.imageryTiles.add(id);
    report();
  });
  map.on("error", e => { stats.errors++; report(`error: ${e.error && e.error.message}`); });

  // field polygons: the GeoJSON tiles under the view, at the view's zoom (cached per tile)
  const geojson = new Map();
  let wanted = 0;
  function loadFields() {
    const z = Math.min(Math.floor(map.getZoom()) + 1, tj.maxzoom);  // 256 px tiles, as the raster layers
    const empty = {type: "FeatureCollection", features: []};
    if (z < tj.minzoom) { map.getSource("fields").setData(empty); map.getSource("outlines").setData(empty);
      report(`zoom in to ${tj.minzoom} for fields`); return; }
    const tiles = tilesOver(map.getBounds(), z);
    const urls = tiles.map(([x, y]) => tj.geojson[0].replace("{z}", z).replace("{x}", x).replace("{y}", y));
    const mine = ++wanted;
    Promise.all(urls.map(u => geojson.get(u) || geojson.set(u, fetch(u, {headers}).then(r => {
      if (!r.ok) { if (r.status >= 500) stats.errors++; return {features: []}; }
      stats.geojsonTiles++; return r.json(); }).catch(() => { stats.errors++; return {features: []}; })).get(u)))
      .then(parts => {
        if (mine !== wanted) return;
        const features = parts.flatMap(p => p.features);
        const lines = parts.flatMap((p, i) => p.features.map(f => outline(f, tileBounds(z, ...tiles[i]))));
        map.getSource("fields").setData({type: "FeatureCollection", features});
        map.getSource("outlines").setData({type: "FeatureCollection", features: lines});
        stats.fields = features.length; report();
      });
  }
  // at style load, not "load": that waits for every raster tile, which the model may take minutes to draw
  map.once("style.load", loadFields);
  map.on("moveend", loadFields);
  map.on("idle", () => { document.body.dataset.idle = 1; });
  // fields in view: the distinct fields the outline layer has drawn (a field cut by tiles counts once)
  map.on("render", () => {
    if (!stats.fields || !map.getLayer("fields-line")) return;
    const drawn = new Set(map.queryRenderedFeatures({layers: ["fields-line"]}).map(f => f.properties.id)).size;
    if (drawn !== stats.drawn) { stats.drawn = drawn; report(); }
  });

  const rows = {"id": v => v, "metrics:area": v => `${(v / 1e4).toFixed(3)} ha`,
    "metrics:perimeter": v => `${Math.round(v)} m`, "confidence": v => Number(v).toFixed(2),
    "class": v => v, "scene_id": v => v, "source": v => v, "determination:datetime": v => v};
  map.on("click", "fields-fill", e => {
    const p = e.features[0].properties;
    const html = Object.entries(rows).filter(([k]) => p[k] !== undefined && p[k] !== null)
      .map(([k, f]) => `<tr><td>${k}</td><td>${f(p[k])}</td></tr>`).join("");
    new maplibregl.Popup().setLngLat(e.lngLat).setHTML(`<table>${html}</table>`).addTo(map);
  });
  map.on("mouseenter", "fields-fill", () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", "fields-fill", () => { map.getCanvas().style.cursor = ""; });
  report();
}).catch(e => { stats.errors++; report(`cannot load tilejson.json: ${e}`); });
</script></body></html>
"""
