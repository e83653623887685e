import importlib.util
from pathlib import Path

import pytest
import shapely

import magseg_ray.fields.polygons as polygons

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_codec_benchmark_on_the_repo_sample(capsys):
    result = load("codec").main(["--labels", str(ROOT / "tests" / "data" / "naip")])
    assert result["patches"] > 500 and result["roundtrip_exact_rate"] == 1.0
    assert result["rrle_tokens_mean"] < result["text4seg_tokens_mean"] and result["token_ratio"] > 1
    assert capsys.readouterr().out.count("\n") == 1  # one JSON line


def test_streaming_benchmark_on_the_repo_sample(ray_cluster, capsys):
    result = load("streaming").main(["--scenes", str(ROOT / "tests" / "data" / "naip"), "--chip", "256"])
    assert result["scenes"] == 2 and result["chips"] > 20 and result["failures"] == 0
    assert result["pipeline_mb"] > 0 and result["raw_mb"] > 0 and result["mb_per_s_ratio"] > 0
    assert capsys.readouterr().out.strip().count("\n") == 0


@pytest.mark.slow  # about 80 s on 2 busy cores (4 actor starts)
def test_grpo_benchmark_with_the_tiny_preset(ray_cluster, capsys):
    result = load("grpo").main(["--model", "tiny", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "16",
                                "--repeat", "1"])
    assert 0 < result["lora_sync_bytes"] < result["full_sync_bytes"] and result["bytes_ratio"] > 1
    assert result["lora_sync_ms"] > 0 and result["full_sync_ms"] > 0
    assert result["rollout_answers_per_s_1_actor"] > 0 and result["rollout_answers_per_s_2_actors"] > 0
    assert result["generate_rollout_answers_per_s"] > 0 and result["prefix_reuse_answers_per_s"] > 0
    ratio = result["prefix_reuse_answers_per_s"] / result["generate_rollout_answers_per_s"]
    assert result["decode_ratio"] == pytest.approx(ratio, abs=0.02)
    assert capsys.readouterr().out.strip().count("\n") == 0


@pytest.mark.parametrize("decoding", ["free", "constrained"])
def test_answer_formats_benchmark_on_the_repo_sample(capsys, decoding):
    result = load("answer_formats").main(["--labels", str(ROOT / "tests" / "data" / "naip"), "--steps", "3",
                                          "--val", "6", "--pool", "60", "--d", "32", "--layers", "1",
                                          "--decoding", decoding])
    for name in ("rrle", "anchored"):
        assert 0 <= result[name]["pixel_acc"] <= 1 and result[name]["mean_tokens"] > 0
        assert result[name]["train_s"] > 0
    if decoding == "constrained":  # the grammar makes every answer a whole, valid mask
        assert result["rrle"]["repaired"] == result["anchored"]["repaired"] == 0
    assert set(result["ratio"]) == {"pixel_acc", "field_iou", "boundary_iou", "exact"}
    assert capsys.readouterr().out.strip().count("\n") == 0


def test_the_reducer_writes_its_polygons_and_the_old_ones_with_the_old_simplifier(monkeypatch):
    """The mapping benchmark's reducer on a 2048 px mask: the fingerprint of its polygons is the one
    it writes now (``simplify_fields``); with the topology-preserving simplifier on every field
    instead, it is the fingerprint of the reducer before its fast instance paths (SciPy transforms
    over the whole raster, commit 8ceb2b9), so the instances are still those. Shapely and rasterio
    as pinned."""
    mapping = load("mapping")
    result = mapping.reducer_km2_per_s(2048, 16.0)
    assert result["reducer_fields"] == 1009
    assert result["reducer_sha256"] == "4f469a94fdf362e5b9d8680f79d5f0517cc0520c506f15c6731bb12490332776"
    monkeypatch.setattr(polygons, "simplify_fields",
                        lambda geoms, tolerance: shapely.simplify(geoms, tolerance, preserve_topology=True))
    before = mapping.reducer_km2_per_s(2048, 16.0)
    assert before["reducer_sha256"] == "094964157cb96514863e4acd8dcc89cf2640aba7513156c8908a6347c57bcee2"


def test_the_mapping_benchmark_runs_where_pytorch_is_all_there_is(tmp_path):
    """The GPU recipe times the decoder on a lent machine (PyTorch and transformers only) from chips
    saved here: with ``--chips-file`` and ``--reducer-px 0`` nothing of the geo stack is imported."""
    import json
    import subprocess
    import sys

    chips = tmp_path / "chips.npy"
    assert load("mapping").main(["--chips", "1", "--save-chips", str(chips)]) == {}
    blocked = ["ray", "deepspeed", "rasterio", "geopandas", "pyarrow", "s3fs", "shapely", "pyogrio", "edt"]
    argv = ["mapping.py", "--chips-file", str(chips), "--baseline-every", "32", "--reducer-px", "0"]
    code = ("import sys, runpy; sys.modules.update({m: None for m in %r}); sys.argv = %r; "
            "runpy.run_path(%r, run_name='__main__')") % (blocked, argv, str(ROOT / "benchmarks" / "mapping.py"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["patches"] == 64 and line["baseline_patches"] == 2 and line["answers_equal"] == 1.0
    assert line["device"] == "cpu" and "reducer_km2" not in line
    assert 0 < line["actor_tokens_per_patch"] < line["baseline_tokens_per_patch"]  # prefix reuse feeds less
    # the GPU recipe's second line: the actor alone, without drafts
    plain = load("mapping").main(["--chips-file", str(chips), "--baseline-every", "0", "--draft-tokens", "0",
                                  "--reducer-px", "0"])
    assert "ratio" not in plain and plain["draft_tokens"] == 0 and plain["patches"] == 64
    assert plain["actor_forward_passes"] > line["actor_forward_passes"]  # drafts save passes
