"""cluster/scale_plan.py: the arithmetic of the country-scale plan, on a small JSON-lines sample."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("scale_plan", ROOT / "cluster" / "scale_plan.py")
sp = importlib.util.module_from_spec(spec)
sys.modules["scale_plan"] = sp  # dataclasses look their module up
spec.loader.exec_module(sp)

CODEC_05 = {"benchmark": "codec", "labels": "L", "patch": 32, "resolution_m": 0.5, "patches": 1000,
            "rrle_tokens_mean": 10.0, "rrle_tokens_p95": 56.0, "rrle_chars_mean": 11.0}
CODEC_1 = {**CODEC_05, "resolution_m": None, "rrle_tokens_mean": 18.0, "rrle_chars_mean": 21.0}
STREAM = {"benchmark": "streaming", "chip": 512, "chips": 100, "pipeline_chips_per_s": 4.0, "pipeline_mb": 2.62144}
CPU_MAPPING = {"benchmark": "mapping", "actor_patches_per_s": 3.0, "model": "tiny", "device": "cpu"}


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "bench.jsonl"
    lines = [json.dumps(CODEC_1), "not json: a log line", json.dumps(CODEC_05), json.dumps(STREAM),
             json.dumps(CPU_MAPPING)]
    path.write_text("\n".join(lines) + "\n")
    return path


def gpu_line(patches_per_s, model="gemma-3-4b-it"):
    return {"benchmark": "mapping", "actor_patches_per_s": patches_per_s, "model": model, "device": "cuda:0 H100",
            "_file": "x"}


def test_geometry_of_05m_chips():
    g = sp.geometry(sp.Settings())
    assert g["pixels_per_km2"] == 4_000_000
    assert g["patches_per_chip"] == 256
    assert g["patches_per_km2"] == pytest.approx(4e6 / 448**2 * 256)  # ~5102
    assert g["overlap_factor"] == pytest.approx((512 / 448) ** 2)
    no_overlap = sp.geometry(sp.Settings(overlap=0))
    assert no_overlap["patches_per_km2"] == pytest.approx(4e6 / 1024)  # every pixel in exactly one patch


def test_tokens_prefer_the_plans_resolution_and_count_characters(sample):
    lines = sp.read_lines([sample])
    assert [r["benchmark"] for r in lines] == ["codec", "codec", "streaming", "mapping"]
    t = sp.tokens_per_patch(lines, sp.Settings())
    assert t["value"] == 12.0 and "measured" in t["provenance"] and "proxy" not in t["provenance"]
    t1 = sp.tokens_per_patch(lines, sp.Settings(resolution_m=1.0))  # no 1.0 line: the last codec line, flagged
    assert t1["value"] == 12.0 and "proxy" in t1["provenance"]


def test_replica_time_is_the_sum_of_its_stages():
    s, g = sp.Settings(), sp.geometry(sp.Settings())
    m = sp.MODELS["gemma3-4b"]
    prompt = sp.prompt_tokens([])  # no real_size line: the assumed layout
    rep = sp.replica(m, 12.0, g, s, None, prompt)
    expected = (12.0 / m.decode_tokens_per_s
                + (sp.PATCH_TEXT_TOKENS + (sp.PREFIX_TEXT_TOKENS + sp.IMAGE_TOKENS) / 256) / m.prefill_tokens_per_s
                + (1 / 256) / sp.VISION_IMAGES_PER_S)
    assert rep["patches_per_s"] == pytest.approx(1 / expected)
    assert sum(rep["stage_share"].values()) == pytest.approx(1)
    assert max(rep["stage_share"], key=rep["stage_share"].get) == "decode"
    crop = sp.replica(m, 12.0, g, replace(s, local_crop=True), None, prompt)
    assert crop["stage_share"]["vision"] > 0.5 and crop["patches_per_s"] < rep["patches_per_s"] / 5


def test_a_real_size_line_replaces_the_assumed_prompt_tokens():
    line = {"benchmark": "real_size", "_file": "f", "image_tokens_per_image": 262, "prefill_tokens_per_chip": 400,
            "suffix_tokens_per_patch": 24.0}
    prompt = sp.prompt_tokens([line])
    assert (prompt["image"], prompt["prefix"], prompt["suffix"]) == (262, 400, 24.0)
    assert prompt["provenance"].startswith("measured (CPU, random weights)")
    s, g, m = sp.Settings(), sp.geometry(sp.Settings()), sp.MODELS["gemma3-4b"]
    slower = sp.replica(m, 12.0, g, s, None, prompt)["prefill_tokens_per_patch"]
    assert slower == pytest.approx(24.0 + 400 / 256)


def test_doubling_throughput_halves_gpu_hours_and_cost(sample):
    lines = sp.read_lines([sample])
    slow = sp.plan(lines + [gpu_line(200)])["models"]["gemma3-4b"]
    fast = sp.plan(lines + [gpu_line(400)])["models"]["gemma3-4b"]
    assert slow["replica"]["provenance"].startswith("measured")
    for country in ("Cambodia", "India"):
        assert fast["countries"][country]["gpu_hours"] == pytest.approx(slow["countries"][country]["gpu_hours"] / 2)
        assert fast["countries"][country]["usd"] == pytest.approx(slow["countries"][country]["usd"] / 2)
    # hours = km2 * patches/km2 / (patches/s * utilisation) / 3600; cost = hours * price
    india = slow["countries"]["India"]
    g = sp.geometry(sp.Settings())
    assert india["gpu_hours"] == pytest.approx(1_690_000 * g["patches_per_km2"] / (200 * 0.8) / 3600)
    assert india["usd"] == pytest.approx(india["gpu_hours"] * 4.0)
    ratio = india["gpu_hours"] / slow["countries"]["Cambodia"]["gpu_hours"]
    assert ratio == pytest.approx(1_690_000 / 45_000)


def test_the_12b_model_is_not_measured_by_a_4b_line_and_cpu_lines_are_only_noted(sample):
    lines = sp.read_lines([sample])
    p = sp.plan(lines + [gpu_line(400)])
    assert p["models"]["gemma3-12b"]["replica"]["provenance"].startswith("assumed")
    assert any("not used" in n and "tiny" in n for n in p["notes"])


def test_cluster_rates_scale_with_gpus_and_reads_come_from_the_streaming_line(sample):
    lines = sp.read_lines([sample])
    p64, p128 = sp.plan(lines), sp.plan(lines, sp.Settings(gpus=128))
    a, b = p64["models"]["gemma3-4b"], p128["models"]["gemma3-4b"]
    assert b["countries"]["India"]["days_on_cluster"] == pytest.approx(a["countries"]["India"]["days_on_cluster"] / 2)
    assert b["countries"]["India"]["gpu_hours"] == pytest.approx(a["countries"]["India"]["gpu_hours"])
    assert b["cluster"]["read_cpus"] == pytest.approx(2 * a["cluster"]["read_cpus"])
    rd = p64["reads"]
    assert rd["pixels_per_s_per_cpu"] == pytest.approx(4.0 * 512**2 / 2)  # 2 CPUs in the benchmark
    assert rd["bytes_per_pixel"] == pytest.approx(0.1)                   # 2.62144 MB over 100 chips of 512^2
    assert rd["bytes_per_km2"] == pytest.approx(0.1 * 4e6 * (512 / 448) ** 2)


def test_one_command_prints_the_plan(sample):
    out = subprocess.run([sys.executable, str(ROOT / "cluster" / "scale_plan.py"), str(sample)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| gemma3-4b |" in out.stdout and "| gemma3-12b |" in out.stdout and "India" in out.stdout
    assert "measured:" in out.stdout and "assumed" in out.stdout
    js = subprocess.run([sys.executable, str(ROOT / "cluster" / "scale_plan.py"), str(sample), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert json.loads(js.stdout)["geometry"]["patches_per_chip"] == 256


def test_no_codec_line_is_a_clear_error(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(STREAM) + "\n")
    with pytest.raises(SystemExit, match="no codec benchmark line"):
        sp.plan(sp.read_lines([path]))


def test_reducer_cpus_come_from_a_measured_reducer_rate():
    base = [CODEC_05, STREAM]
    assumed = sp.plan([{**r, "_file": "x"} for r in base])["models"]
    slow = {**CPU_MAPPING, "_file": "x", "reducer_km2": 16.0, "reducer_fields": 100, "reducer_km2_per_s": 0.5}
    fast = {**slow, "reducer_km2_per_s": 1.0}
    m_slow = sp.plan([{**r, "_file": "x"} for r in base] + [slow])["models"]
    m_fast = sp.plan([{**r, "_file": "x"} for r in base] + [fast])["models"]
    for key in m_slow:
        assert m_fast[key]["cluster"]["reducer_cpus"] == pytest.approx(m_slow[key]["cluster"]["reducer_cpus"] / 2)
        assert "measured" in m_slow[key]["cluster"]["reducer_source"]
        assert "assumed" in assumed[key]["cluster"]["reducer_source"]
