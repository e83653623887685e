"""``GET /map``: a small hand-written tile viewer (one canvas, no library, nothing from a CDN).

It draws the imagery tiles (``imagery/{z}/{x}/{y}.png``), the class overlay
(``tiles/{z}/{x}/{y}.png``) and the field outlines (``tiles/{z}/{x}/{y}.geojson``) of the server it
is served from, fetching each with the ``X-API-Key`` header when the page's URL has ``?key=``.
Drag to pan, wheel or +/- to zoom; the view is kept in the URL hash as ``#zoom/lat/lon``, so a link
(or a screenshot command) opens a given place. ``canvas.dataset.pending`` is the number of tiles
still loading (headless tests wait for 0).
"""

MAP_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>magseg-ray fields</title>
<style>
html, body { margin: 0; height: 100%; font: 13px sans-serif; overflow: hidden; }
#map { position: absolute; inset: 0; cursor: grab; background: #1d1f21; }
#bar { position: absolute; top: 8px; left: 8px; background: #fffe; padding: 6px 8px; border-radius: 4px; }
#bar button { width: 26px; }
</style></head>
<body>
<canvas id="map"></canvas>
<div id="bar"><button id="zin">+</button> <button id="zout">&minus;</button>
<label><input type="checkbox" id="ov" checked> classes</label>
<label><input type="checkbox" id="gj" checked> fields</label> <span id="st"></span></div>
<script>
"use strict";
const T = 256, key = new URLSearchParams(location.search).get("key");
const headers = key ? {"X-API-Key": key} : {};
const cv = document.getElementById("map"), ctx = cv.getContext("2d");
const cache = new Map();
let z = 17, cx = 0, cy = 0, minzoom = 0, maxzoom = 22, pending = 0, errors = 0;

const wx = (lon, zz) => (lon + 180) / 360 * T * 2 ** zz;
const wy = (lat, zz) => { const s = Math.sin(lat * Math.PI / 180);
  return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * T * 2 ** zz; };
const lon = (x, zz) => x / (T * 2 ** zz) * 360 - 180;
const lat = (y, zz) => { const n = Math.PI - 2 * Math.PI * y / (T * 2 ** zz);
  return 180 / Math.PI * Math.atan(0.5 * (Math.exp(n) - Math.exp(-n))); };

function status() {
  document.getElementById("st").textContent = `z${z} \u00b7 loading ${pending} \u00b7 errors ${errors}`;
  cv.dataset.pending = pending; cv.dataset.errors = errors;
}
function get(url, json) {
  if (cache.has(url)) return cache.get(url);
  const entry = {ok: false}; cache.set(url, entry); pending++; status();
  fetch(url, {headers}).then(async r => {
    if (!r.ok) { entry.status = r.status; if (r.status >= 500) errors++; return; }
    entry.data = json ? await r.json() : await createImageBitmap(await r.blob()); entry.ok = true;
  }).catch(() => { errors++; }).finally(() => { pending--; status(); draw(); });
  return entry;
}
function outline(geom, ox, oy) {
  const polys = geom.type === "Polygon" ? [geom.coordinates] : geom.type === "MultiPolygon" ? geom.coordinates : [];
  for (const poly of polys) for (const ring of poly) {
    ring.forEach(([x, y], i) => { const px = wx(x, z) - ox, py = wy(y, z) - oy;
      i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
    ctx.closePath();
  }
}
function draw() {
  if (cv.width !== innerWidth || cv.height !== innerHeight) { cv.width = innerWidth; cv.height = innerHeight; }
  ctx.fillStyle = "#1d1f21"; ctx.fillRect(0, 0, cv.width, cv.height);
  const ox = cx - cv.width / 2, oy = cy - cv.height / 2, n = 2 ** z, tiles = [];
  for (let ty = Math.floor(oy / T); ty <= Math.floor((oy + cv.height) / T); ty++)
    for (let tx = Math.floor(ox / T); tx <= Math.floor((ox + cv.width) / T); tx++)
      if (tx >= 0 && ty >= 0 && tx < n && ty < n) tiles.push([tx, ty]);
  const layers = [["imagery", false, true], ["tiles", false, document.getElementById("ov").checked && z >= minzoom]];
  for (const [path, json, on] of layers) if (on) for (const [tx, ty] of tiles) {
    const e = get(`${path}/${z}/${tx}/${ty}.png`, json);
    if (e.ok) ctx.drawImage(e.data, tx * T - ox, ty * T - oy, T, T);
  }
  if (document.getElementById("gj").checked && z >= minzoom) {
    ctx.strokeStyle = "#00e5ff"; ctx.lineWidth = 1.2; ctx.beginPath();
    for (const [tx, ty] of tiles) {
      const e = get(`tiles/${z}/${tx}/${ty}.geojson`, true);
      if (e.ok) for (const f of e.data.features) outline(f.geometry, ox, oy);
    }
    ctx.stroke();
  }
  history.replaceState(null, "", `${location.search}#${z}/${lat(cy, z).toFixed(6)}/${lon(cx, z).toFixed(6)}`);
}
function zoomTo(nz, ax = cv.width / 2, ay = cv.height / 2) {
  nz = Math.max(0, Math.min(maxzoom, nz)); if (nz === z) return;
  const f = 2 ** (nz - z), px = cx - cv.width / 2 + ax, py = cy - cv.height / 2 + ay;
  cx = px * f - ax + cv.width / 2; cy = py * f - ay + cv.height / 2; z = nz; status(); draw();
}
let drag = null;
cv.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY]; cv.style.cursor = "grabbing"; });
addEventListener("mouseup", () => { drag = null; cv.style.cursor = "grab"; });
addEventListener("mousemove", e => { if (!drag) return;
  cx -= e.clientX - drag[0]; cy -= e.clientY - drag[1]; drag = [e.clientX, e.clientY]; draw(); });
cv.addEventListener("wheel", e => { e.preventDefault(); zoomTo(z + (e.deltaY < 0 ? 1 : -1), e.clientX, e.clientY); });
document.getElementById("zin").onclick = () => zoomTo(z + 1);
document.getElementById("zout").onclick = () => zoomTo(z - 1);
document.getElementById("ov").onchange = draw;
document.getElementById("gj").onchange = draw;
addEventListener("resize", draw);

fetch("tilejson.json" + location.search, {headers}).then(r => r.json()).then(tj => {
  minzoom = tj.minzoom; maxzoom = tj.maxzoom;
  let [clon, clat, cz] = tj.center;
  const h = location.hash.slice(1).split("/").map(Number);
  if (h.length === 3 && h.every(Number.isFinite)) [cz, clat, clon] = h;
  z = cz; cx = wx(clon, z); cy = wy(clat, z); status(); draw();
});
</script></body></html>
"""
