"""Country-scale sizing of map_region: GPU-hours, cost and the limiting stage, from benchmark lines.

    python cluster/scale_plan.py BENCH.jsonl [BENCH2.jsonl ...] [--gpus 64] [--usd-per-gpu-hour 4]
                                 [--local-crop] [--json]

Reads the one-JSON-line outputs of ``benchmarks/*.py`` (other lines are skipped) and prints the
plan that cluster/scale_plan.md explains. Every figure carries its provenance:

- ``measured``: taken from a benchmark line (which file, which benchmark, on what);
- ``assumed``: a constant below, with its reasoning or source.

Lines used: ``codec`` (R-RLE tokens / characters per 32x32 patch; a line with ``resolution_m``
equal to ``--resolution`` is preferred), ``mapping`` (``actor_patches_per_s`` of the model actor,
with ``model`` and ``device``: used in place of the assumed GPU throughput only when the device is
a GPU and the model is Gemma3 4B or 12B), ``streaming`` (chips/s and bytes of the mapping input
pipeline: read cost per CPU core and bytes per pixel).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

M2_PER_KM2 = 1e6


@dataclass(frozen=True)
class GpuModel:
    """Assumed throughput of one model replica on one GPU (bf16, continuous batching, prefix cache)."""

    name: str
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    reasoning: str


# Assumed, not measured here (no GPU and no Gemma3 weights on the machines this was written on).
GPU = "NVIDIA H100 SXM 80 GB (989 TFLOP/s dense bf16, 3.35 TB/s HBM3), one replica per GPU"
MODELS = {
    "gemma3-4b": GpuModel(
        "gemma3-4b", 12_000, 40_000,
        "3.9e9 decoder params: 7.8 GFLOP/token, so the compute roofline is ~127k tok/s and the "
        "weight-read roofline at 256 concurrent sequences ~110k tok/s (7.8 GB per step at 3.35 TB/s). "
        "Grammar masks, sampling, KV reads and scheduling leave about a tenth in practice: 12k decode "
        "tok/s. Prefill runs near 40% MFU: ~50k tok/s, taken as 40k."),
    "gemma3-12b": GpuModel(
        "gemma3-12b", 5_000, 14_000,
        "1.18e10 decoder params: 23.6 GFLOP/token (~42k tok/s compute roofline), 23.6 GB of weights "
        "per step (~36k tok/s at 256 sequences); a similar ~14% realised: 5k decode tok/s; prefill ~17k at "
        "40% MFU, taken as 14k."),
}
VISION_IMAGES_PER_S = 70.0
"""Assumed: Gemma3's SigLIP-400M at 896x896 (4096 patch tokens, same tower for 4B and 12B) costs
~5.4 TFLOP per image (3.3 linear + 2.1 attention); at 40% of 989 TFLOP/s that is ~73 images/s."""
IMAGE_TOKENS = 258
"""Assumed (Gemma3 report): 256 soft tokens per image plus begin/end-of-image markers."""
PREFIX_TEXT_TOKENS = 80
"""Assumed: the shared instruction (magseg_ray.prompt.instruction, ~60 words and punctuation)."""
PATCH_TEXT_TOKENS = 20
"""Assumed: ``Patch x X0-X1 y Y0-Y1`` plus turn markers, digits split one per token (Gemma3)."""
UTILISATION = 0.8
"""Assumed share of paid GPU time spent mapping (start-up, model load, scale-down tail, spot re-dos)."""
COG_BYTES_PER_PIXEL = 0.39
"""Measured here: the 30 shared naip-fields RGB JPEG COGs (with overviews) hold 11.8 MB for 30 km^2
at 1 m (``du -b``); used when no streaming benchmark line gives bytes per pixel."""
READ_PIXELS_PER_S_PER_CPU = 2.0e6
"""Assumed when no streaming line is given: one core decodes ~2 Mpx/s of JPEG COG tiles
(libjpeg-turbo class, with windowed reads and Python overhead): ~8 chips/s of 512x512."""
IN_FLIGHT_CHIPS_PER_ACTOR = 16
"""Assumed: chips held per model actor: the batch it decodes (``--chips-per-call``, 8 by default)
and one more batch queued."""
REDUCER_S_PER_CHIP = 0.05
"""Assumed CPU seconds to stitch one chip's patch masks, resolve its overlap and write it."""
S3_USD_PER_1000_GETS = 0.0004
"""Assumed: S3 Standard GET price (us-east-1 list price)."""
TILE = 256
"""COG tile side in pixels (the naip-fields COGs and rasterio's COG driver default)."""
AREAS_KM2 = {
    "Cambodia": (45_000, "assumed: ~4.5 Mha cropland (arable land + permanent crops), FAOSTAT Land "
                         "Use, 'Cropland', circa 2021; rounded, not re-checked offline"),
    "India": (1_690_000, "assumed: ~169 Mha cropland (arable ~155 Mha + permanent crops ~14 Mha), "
                         "FAOSTAT Land Use, 'Cropland', circa 2021; rounded, not re-checked offline"),
}


@dataclass
class Settings:
    resolution_m: float = 0.5
    patch: int = 32
    chip: int = 512
    overlap: int = 64
    local_crop: bool = False
    gpus: int = 64
    usd_per_gpu_hour: float = 4.0
    """Assumed: between spot / specialist-cloud H100 rates (~$2-3) and hyperscaler on-demand (~$7+)."""
    utilisation: float = UTILISATION
    models: dict = field(default_factory=lambda: dict(MODELS))


def read_lines(paths) -> list[dict]:
    """Every JSON object line of the files, tagged with its file (other lines are skipped)."""
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "benchmark" in rec:
                    out.append({**rec, "_file": str(path)})
    return out


def _model_key(name: str) -> str | None:
    m = re.search(r"(\d+)\s*b\b", str(name).lower().replace("-", " ").replace("_", " "))
    return {"4": "gemma3-4b", "12": "gemma3-12b"}.get(m.group(1)) if m else None


def tokens_per_patch(lines: list[dict], s: Settings) -> dict:
    """Answer tokens per patch: codec characters (Gemma3 splits digits: <= 1 token per char) + 1 end."""
    codec = [r for r in lines if r["benchmark"] == "codec" and r.get("patch", 32) == s.patch]
    if not codec:
        raise SystemExit("scale_plan: no codec benchmark line for patch %d (run benchmarks/codec.py)" % s.patch)
    at_res = [r for r in codec if r.get("resolution_m") == s.resolution_m]
    r = (at_res or codec)[-1]
    chars = r.get("rrle_chars_mean")
    per_patch = (chars if chars is not None else r["rrle_tokens_mean"]) + 1
    what = "characters (upper bound of Gemma3 tokens)" if chars is not None else "project-tokenizer tokens"
    res = f"{r['resolution_m']} m" if r.get("resolution_m") else "the labels' own resolution"
    return {"value": per_patch, "project_tokens_mean": r["rrle_tokens_mean"], "p95_tokens": r.get("rrle_tokens_p95"),
            "provenance": f"measured: {r['_file']} codec, {r['patches']} patches of {r['labels']} at "
                          f"{res}, mean R-RLE {what} + 1 end-of-turn token"
                          + ("" if at_res else f"; no {s.resolution_m} m line, used as a proxy")}


def prompt_tokens(lines: list[dict]) -> dict:
    """Prompt tokens: image tokens per image, the shared prefix per chip and the suffix per patch,
    from the last ``real_size`` line (Gemma3 4B's processor, a Gemma-kind tokenizer), else assumed."""
    real = [r for r in lines if r["benchmark"] == "real_size"]
    if not real:
        return {"image": IMAGE_TOKENS, "prefix": PREFIX_TEXT_TOKENS + IMAGE_TOKENS, "suffix": PATCH_TEXT_TOKENS,
                "provenance": "assumed: Gemma3's 256 soft tokens + markers, ~80 instruction tokens, "
                              "`Patch x X0-X1 y Y0-Y1` + turn markers"}
    r = real[-1]
    return {"image": r["image_tokens_per_image"], "prefix": r["prefill_tokens_per_chip"],
            "suffix": r["suffix_tokens_per_patch"],
            "provenance": f"measured (CPU, random weights): {r['_file']} real_size, the 4B's processor "
                          "(896 px, 256 image tokens) and a Gemma-kind tokenizer on a 512 px chip"}


def geometry(s: Settings) -> dict:
    px = (1000 / s.resolution_m) ** 2
    stride = s.chip - s.overlap
    patches_per_chip = (s.chip // s.patch) ** 2
    chips_per_km2 = px / stride**2
    return {"pixels_per_km2": px, "patches_per_chip": patches_per_chip, "chips_per_km2": chips_per_km2,
            "patches_per_km2": chips_per_km2 * patches_per_chip, "overlap_factor": (s.chip / stride) ** 2,
            "provenance": f"exact: {s.resolution_m} m pixels, {s.chip} px chips with {s.overlap} px overlap "
                          f"(stride {stride}), {s.patch} px patches; every patch of every chip is answered"}


def replica(model: GpuModel, tokens: float, g: dict, s: Settings, measured: dict | None, prompt: dict) -> dict:
    """GPU seconds per patch of one replica, split by stage (decode, prefill, vision); ``prompt``:
    :func:`prompt_tokens`."""
    n = g["patches_per_chip"]
    prefill = prompt["suffix"] + (prompt["image"] if s.local_crop else 0) + prompt["prefix"] / n
    images = (1 if s.local_crop else 0) + 1 / n
    stages = {"decode": tokens / model.decode_tokens_per_s, "prefill": prefill / model.prefill_tokens_per_s,
              "vision": images / VISION_IMAGES_PER_S}
    total = sum(stages.values())
    out = {"model": model.name, "decode_tokens_per_patch": tokens, "prefill_tokens_per_patch": prefill,
           "images_per_patch": images, "stage_share": {k: v / total for k, v in stages.items()},
           "patches_per_s": 1 / total,
           "provenance": f"assumed: {GPU}; {asdict(model)['reasoning']} Vision: "
                         f"{VISION_IMAGES_PER_S:g} images/s (SigLIP-400M at 896 px)."}
    if measured:
        out.update(patches_per_s=measured["actor_patches_per_s"],
                   provenance=f"measured: {measured['_file']} mapping, model {measured.get('model')} on "
                              f"{measured.get('device')} (stage shares stay the assumed model's)")
    return out


def measured_actor(lines: list[dict], key: str) -> tuple[dict | None, list[str]]:
    """The last mapping line for this model measured on a GPU; notes on lines that do not qualify."""
    chosen, notes = None, []
    for r in lines:
        if r["benchmark"] != "mapping" or "actor_patches_per_s" not in r:
            continue
        device = str(r.get("device", "cpu")).lower()
        on_gpu = any(k in device for k in ("cuda", "gpu", "h100", "h200", "a100", "l40"))
        if on_gpu and _model_key(r.get("model", "")) == key:
            chosen = r
        elif not on_gpu or _model_key(r.get("model", "")) is None:
            notes.append(f"measured but not used: {r['_file']} mapping, {r['actor_patches_per_s']} patches/s "
                         f"of model {r.get('model')} on {r.get('device', 'cpu')} (not Gemma3 4B/12B on a GPU)")
    return chosen, notes


def reads(lines: list[dict], g: dict) -> dict:
    stream = [r for r in lines if r["benchmark"] == "streaming" and r.get("chips")]
    if stream:
        r = stream[-1]
        cpus = r.get("cpus", 2)
        px_per_s_cpu = r["pipeline_chips_per_s"] * r["chip"] ** 2 / cpus
        bytes_px = r["pipeline_mb"] * 1e6 / (r["chips"] * r["chip"] ** 2)
        prov = (f"measured: {r['_file']} streaming, {r['chips']} chips of {r['chip']} px from a local S3 "
                f"on {cpus} CPUs of a shared machine (a lower bound of a cluster core's rate)")
    else:
        px_per_s_cpu, bytes_px = READ_PIXELS_PER_S_PER_CPU, COG_BYTES_PER_PIXEL
        prov = "assumed read rate per core (no streaming line); bytes per pixel measured from the naip-fields COGs"
    per_km2 = g["pixels_per_km2"] * g["overlap_factor"]
    return {"cpu_s_per_km2": per_km2 / px_per_s_cpu, "bytes_per_km2": per_km2 * bytes_px,
            "gets_per_km2": per_km2 / TILE**2, "bytes_per_pixel": bytes_px, "pixels_per_s_per_cpu": px_per_s_cpu,
            "provenance": prov}


def reducer_s_per_km2(lines: list[dict], g: dict) -> tuple[float, str]:
    """CPU seconds the reducer spends per km²: measured by a mapping line's reducer figures (the
    reducer runs on CPUs, so a CPU measurement is the real thing), else the per-chip assumption."""
    measured = [r for r in lines if r["benchmark"] == "mapping" and r.get("reducer_km2_per_s")]
    if measured:
        r = measured[-1]
        # CPU time where the line has it: on a shared machine the wall clock mostly measures the neighbours
        rate, clock = (r["reducer_km2_per_cpu_s"], "km² per CPU second") if r.get("reducer_km2_per_cpu_s") else \
            (r["reducer_km2_per_s"], "km²/s")
        return 1 / rate, (f"measured: {r['_file']} mapping, polygonizing {r['reducer_km2']} km² "
                          f"({r['reducer_fields']} fields) at {rate} {clock} on one core")
    return g["chips_per_km2"] * REDUCER_S_PER_CHIP, f"assumed {REDUCER_S_PER_CHIP} s per chip"


def plan(lines: list[dict], s: Settings = Settings()) -> dict:
    g = geometry(s)
    reducer_s, reducer_source = reducer_s_per_km2(lines, g)
    tok = tokens_per_patch(lines, s)
    rd = reads(lines, g)
    prompt = prompt_tokens(lines)
    out = {"settings": {k: v for k, v in asdict(s).items() if k != "models"}, "gpu": GPU, "geometry": g,
           "tokens_per_patch": tok, "prompt_tokens": prompt, "reads": rd, "notes": [], "models": {}}
    for key, model in s.models.items():
        measured, notes = measured_actor(lines, key)
        out["notes"] += [n for n in notes if n not in out["notes"]]
        rep = replica(model, tok["value"], g, s, measured, prompt)
        gpu_s_km2 = g["patches_per_km2"] / rep["patches_per_s"] / s.utilisation
        km2_per_s = s.gpus / gpu_s_km2          # cluster mapping rate with s.gpus GPUs
        chips_per_s = km2_per_s * g["chips_per_km2"]
        countries = {}
        for country, (km2, source) in AREAS_KM2.items():
            gpu_h = km2 * gpu_s_km2 / 3600
            countries[country] = {
                "area_km2": km2, "area_source": source, "gpu_hours": gpu_h, "usd": gpu_h * s.usd_per_gpu_hour,
                "days_on_cluster": km2 / km2_per_s / 86400,
                "read_tb": km2 * rd["bytes_per_km2"] / 1e12,
                "s3_get_usd": km2 * rd["gets_per_km2"] / 1000 * S3_USD_PER_1000_GETS}
        out["models"][key] = {
            "replica": rep, "gpu_s_per_km2": gpu_s_km2, "countries": countries,
            "cluster": {"gpus": s.gpus, "km2_per_hour": km2_per_s * 3600, "chips_per_s": chips_per_s,
                        "read_mb_per_s": km2_per_s * rd["bytes_per_km2"] / 1e6,
                        "read_cpus": km2_per_s * rd["cpu_s_per_km2"],
                        "reducer_cpus": km2_per_s * reducer_s, "reducer_source": reducer_source,
                        "object_store_mb_in_flight": s.gpus * IN_FLIGHT_CHIPS_PER_ACTOR * s.chip**2 * 4 / 1e6,
                        "decode_share": rep["stage_share"]["decode"]},
        }
    return out


def report(p: dict) -> str:
    g, t, rd = p["geometry"], p["tokens_per_patch"], p["reads"]
    s = p["settings"]
    lines = [
        f"# Scale plan: {s['resolution_m']} m, {s['patch']} px patches, {s['chip']} px chips / {s['overlap']} px "
        f"overlap, local crop {'on' if s['local_crop'] else 'off'}",
        f"patches per km2: {g['patches_per_km2']:.0f} ({g['chips_per_km2']:.2f} chips x {g['patches_per_chip']}; "
        f"overlap x{g['overlap_factor']:.3f})  [{g['provenance']}]",
        f"answer tokens per patch: {t['value']:.2f} (project tokenizer {t['project_tokens_mean']}, p95 "
        f"{t['p95_tokens']})  [{t['provenance']}]",
        f"prompt tokens: {p['prompt_tokens']['prefix']} shared prefix per chip, {p['prompt_tokens']['suffix']:.1f} "
        f"suffix per patch, {p['prompt_tokens']['image']} per image  [{p['prompt_tokens']['provenance']}]",
        f"reads: {rd['bytes_per_km2'] / 1e6:.2f} MB/km2, {rd['cpu_s_per_km2']:.2f} CPU s/km2, "
        f"{rd['gets_per_km2']:.0f} GETs/km2  [{rd['provenance']}]",
        f"GPU: {p['gpu']}; utilisation {s['utilisation']:.0%} (assumed); ${s['usd_per_gpu_hour']:.2f}/GPU-h (assumed)",
        "",
        "| model | patches/s/GPU | decode / prefill / vision | GPU-s per km2 | country | GPU-hours | cost USD "
        f"| days on {s['gpus']} GPUs | S3 read TB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in p["models"].items():
        rep, sh = m["replica"], m["replica"]["stage_share"]
        for country, c in m["countries"].items():
            lines.append(
                f"| {key} | {rep['patches_per_s']:.0f} | {sh['decode']:.0%} / {sh['prefill']:.0%} / {sh['vision']:.0%} "
                f"| {m['gpu_s_per_km2']:.1f} | {country} | {c['gpu_hours']:,.0f} | {c['usd']:,.0f} "
                f"| {c['days_on_cluster']:.1f} | {c['read_tb']:.2f} |")
    lines.append("")
    for key, m in p["models"].items():
        c = m["cluster"]
        lines.append(
            f"{key} on {c['gpus']} GPUs: {c['km2_per_hour']:,.0f} km2/h, {c['chips_per_s']:.1f} chips/s; reads "
            f"{c['read_mb_per_s']:.1f} MB/s on {c['read_cpus']:.1f} CPUs; reducer {c['reducer_cpus']:.1f} CPUs "
            f"({c['reducer_source']}); object store in flight ~{c['object_store_mb_in_flight']:.0f} MB "
            f"(RGB + validity of {IN_FLIGHT_CHIPS_PER_ACTOR} chips per actor, assumed)")
        lines.append(f"  throughput: {m['replica']['provenance']}")
    lines += [f"note: {n}" for n in p["notes"]]
    for country, (km2, source) in AREAS_KM2.items():
        lines.append(f"area {country}: {km2:,} km2 ({source})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="files of benchmark JSON lines")
    d = Settings()
    ap.add_argument("--resolution", type=float, default=d.resolution_m, help="metres per pixel (default 0.5)")
    ap.add_argument("--chip", type=int, default=d.chip, help="chip side in pixels (default 512)")
    ap.add_argument("--overlap", type=int, default=d.overlap, help="chip overlap in pixels (default 64)")
    ap.add_argument("--local-crop", action=argparse.BooleanOptionalAction, default=d.local_crop,
                    help="prompts carry a local crop image per patch (default: off at 512 px chips)")
    ap.add_argument("--gpus", type=int, default=d.gpus, help="GPUs of the mapping cluster (default 64)")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=d.usd_per_gpu_hour, help="default 4.0 (assumed)")
    ap.add_argument("--utilisation", type=float, default=d.utilisation, help="default 0.8 (assumed)")
    ap.add_argument("--json", action="store_true", help="print the plan as one JSON line instead")
    a = ap.parse_args(argv)
    s = Settings(resolution_m=a.resolution, chip=a.chip, overlap=a.overlap, local_crop=a.local_crop, gpus=a.gpus,
                 usd_per_gpu_hour=a.usd_per_gpu_hour, utilisation=a.utilisation)
    p = plan(read_lines(a.files), s)
    print(json.dumps(p) if a.json else report(p))
    return p


if __name__ == "__main__":
    main(sys.argv[1:])
