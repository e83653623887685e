"""Every job that loads the mapping model, run on a Gemma3 folder laid out as the hub's
(``tests/hub/gemma3.py``: the 4B's token ids and vocabulary, a Gemma-kind tokenizer, random
weights), as a user bringing a checkpoint runs them: SFT from it, GRPO from it, a map with it.
The answers are arbitrary (random weights); what is tested is that each job's real load path,
prompt layout and outputs hold on the real kind of checkpoint."""

import importlib.util
import json
import shutil
from pathlib import Path

import geopandas as gpd
import pytest

from magseg_ray.map_region import DEMO_DIR
from magseg_ray.model.card import ModelPrompt, read_model_prompt, write_model_prompt
from magseg_ray.model.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "tests/data/naip")


def job(name):
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def flags(**values):
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def base(gemma3_dir, tmp_path_factory):
    """The hub folder with a model card for 128 px chips and no local crop (the scale plan's layout)."""
    model = tmp_path_factory.mktemp("hub") / "gemma3"
    shutil.copytree(gemma3_dir, model)
    write_model_prompt(model, ModelPrompt(chip_size=128, local_crop=False))
    return model


@pytest.mark.slow  # three job runs on a 262k-token vocabulary: several minutes on 2 busy cores
def test_sft_then_grpo_then_a_map_from_a_hub_folder(ray_cluster, base, tmp_path, capsys):
    sft = flags(data=DATA, base=base, storage=tmp_path, run_name="s", chip_size=128,
                val_fraction=0.5, num_workers=1, cpus_per_worker=0.5, max_steps=2, batch_size=2, val_patches=2,
                checkpoint_every=2, eval_every=0, shuffle_patches=4, dtype="bfloat16", address=ray_cluster.address) + ["--no-local-crop"]
    assert job("sft")(sft) == 0
    tuned = tmp_path / "s" / "model"
    assert load_model(tuned)[1].tokenizer.tokenize("f12") == ["f", "1", "2"]  # Gemma's tokenizer kept
    assert read_model_prompt(tuned).local_crop is False

    grpo = flags(data=DATA, model=tuned, storage=tmp_path, run_name="g", val_fraction=0.5, train_chips=2,
                 val_patches=2, group_size=2, prompts_per_step=1, max_new_tokens=16, max_steps=1,
                 checkpoint_every=1, eval_every=0, num_actors=1, cpus_per_actor=0.5, num_workers=1,
                 cpus_per_worker=0.5, address=ray_cluster.address)
    assert job("grpo")(grpo) == 0
    history = json.loads((tmp_path / "g" / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 1 and 0 <= history[-1]["reward"] <= 1

    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(gpd.read_file(DEMO_DIR / "demo.geojson").iloc[:1].to_json())
    capsys.readouterr()
    out = tmp_path / "map"
    assert job("map_region")(flags(aoi=aoi, model=tmp_path / "g" / "model", out=out, max_new_tokens=8,
                                   cpus_per_actor=0.5, address=ray_cluster.address)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["chips"] > 0, summary
    assert len(gpd.read_file(out / "fields.gpkg")) > 0


@pytest.mark.slow  # a Serve replica of the hub folder answering a tile and a query over HTTP
def test_the_tile_server_answers_with_a_hub_folder(ray_cluster, base, tmp_path):
    from ray import serve

    from magseg_ray.cluster import free_port
    from magseg_ray.serve import app
    from tests.serve.test_serve import BBOX, INSIDE, get, post

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app({"model": str(base), "max_new_tokens": 8, "overlap": 32, "cpus_per_replica": 0.25}),
                  name="hub", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        status, headers, _ = get(f"{url}/tiles/{INSIDE}.png")
        assert status == 200 and headers["X-Tile-Source"] == "model"
        status, _, body = post(f"{url}/segment", {"query": "the field", "bbox": BBOX})
        assert status == 200 and json.loads(body)["type"] == "FeatureCollection", body[:300]
    finally:
        serve.shutdown()
