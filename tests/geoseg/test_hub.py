"""GeoSeg on hub-layout folders of every family the README names (tests/hub: tiny random models
with the hub's processor, tokenizer and chat-template files): first-contact failures, each fixed
here, and jobs/geoseg.py's real load path for each grounder and each route."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from magseg_ray.errors import ConfigError, ModelLoadError
from magseg_ray.geoseg.clip_surgery import ClipSurgery
from magseg_ray.geoseg.grounder import Grounder
from magseg_ray.geoseg.loading import image_settings
from magseg_ray.geoseg.segmenters import PointSegmenter, TextSegmenter

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "tests" / "data" / "naip" / "naip_44p0347_m93p8702.tif"
IMAGE = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
CROP = IMAGE[10:50, 20:90]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_qwen_vl_folder_loads_without_torchvision_and_answers(hub, family):
    """Was: an uncaught ImportError (their video processor wants torchvision)."""
    g = Grounder.load(hub[family], max_new_tokens=4)
    assert getattr(g.processor, "video_processor", None) is None
    inputs = g.chat_inputs(Image.fromarray(IMAGE), "the field")
    merge = g.processor.image_processor.merge_size ** 2
    image_tokens = int((inputs["input_ids"][0] == g.model.config.image_token_id).sum())
    assert image_tokens == int(inputs["image_grid_thw"][0].prod()) // merge > 0
    answer = g(IMAGE, "the field")
    assert isinstance(answer.text, str) and (answer.parsed.box is not None or answer.parsed.reason)


def test_a_processor_that_needs_a_missing_package_is_a_clear_error(hub, monkeypatch):
    """A processor with no video part to leave out (Gemma3's) and an import that fails: a
    ModelLoadError that says what to install, not a traceback."""
    from transformers import AutoProcessor

    def fail(*args, **kwargs):
        raise ImportError("Gemma3Processor requires the Torchvision library but it was not found")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", fail)
    with pytest.raises(ModelLoadError, match="requires the Torchvision library.*install torchvision built for"):
        Grounder.load(hub["gemma3"])


def test_a_gemma3_chat_template_writing_the_bos_gives_one_bos(hub):
    """Was: ``<bos><bos>`` (the rendered prompt was tokenized again with special tokens)."""
    g = Grounder.load(hub["gemma3"])
    bos = g.processor.tokenizer.bos_token_id
    assert "{{ bos_token }}" in g.processor.chat_template
    ids = g.chat_inputs(Image.fromarray(IMAGE), "the field")["input_ids"][0].tolist()
    assert ids[0] == bos and ids.count(bos) == 1
    start = g.processor.tokenizer.convert_tokens_to_ids("<start_of_turn>")
    assert ids[1] == start


def test_a_clip_folder_with_an_integer_size_loads(hub):
    """Was: TypeError in image_settings (``"size": 224`` in older CLIP folders)."""
    assert json.loads((Path(hub["clip"]) / "preprocessor_config.json").read_text())["size"] == 32
    assert image_settings(hub["clip"], 224).size == (32, 32)
    sim = ClipSurgery.load(hub["clip"]).similarity(CROP, "field")
    assert sim.shape == CROP.shape[:2] and 0 <= sim.min() < sim.max() <= 1


@pytest.mark.parametrize("family, frame", [("sam", (35, 64)), ("sam2", (64, 64)), ("sam3", (112, 112))])
def test_sam_sam2_and_the_hub_sam3_folder_are_point_segmenters(hub, family, frame):
    """Was: 'holds a 'sam2' model' (the README's own --points sam2.1-hiera-large/) and
    'holds a 'sam3_video' model' (the hub's SAM3 folder)."""
    seg = PointSegmenter.load(hub[family])
    assert seg._frame(40, 73)[0] == frame
    for points in ([(10, 10, 0.9)], [(10, 10, 0.9), (60, 30, 0.5)]):
        mask = seg(CROP, points)
        assert mask.shape == CROP.shape[:2] and mask.dtype == bool


def test_the_hub_sam3_folder_is_the_text_segmenter(hub):
    """Was: 'holds a 'sam3_video' model'."""
    seg = TextSegmenter.load(hub["sam3"], score_threshold=0.0)
    scores, probs = seg.instances(CROP, "field")
    assert probs.shape == (8, *CROP.shape[:2]) and ((scores >= 0) & (scores <= 1)).all()


def test_a_folder_lacking_weights_is_refused_not_filled_with_random_ones(hub, tmp_path):
    """Was: loaded, the missing tracker weights randomly initialised (a SAM3 folder written by
    transformers 5.23's Sam3VideoModel.save_pretrained names them tracker_model.tracker_model.*)."""
    import shutil

    folder = tmp_path / "sam3"
    shutil.copytree(hub["sam3"], folder)
    state = load_file(folder / "model.safetensors")
    save_file({k.replace("tracker_model.", "tracker_model.tracker_model.", 1): v for k, v in state.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks .* weights a Sam3TrackerModel needs"):
        PointSegmenter.load(folder)
    assert TextSegmenter.load(folder).model is not None  # the detector's weights are all there


def test_a_sam_folder_lacking_weights_is_refused(hub, tmp_path):
    """Was: loaded, with a randomly initialised IoU head."""
    import shutil

    sam = tmp_path / "sam"
    shutil.copytree(hub["sam"], sam)
    state = load_file(sam / "model.safetensors")
    save_file({k: v for k, v in state.items() if "iou_prediction_head" not in k}, sam / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks .* weights a SamModel needs .*iou_prediction_head"):
        PointSegmenter.load(sam)


def test_placement_defaults_and_refusals():
    from magseg_ray.geoseg.loading import Placement

    assert Placement.resolve() == (Placement("cuda", "bfloat16") if torch.cuda.is_available() else Placement())
    assert Placement.resolve("cpu", "bfloat16").torch_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="float64"):
        Placement.resolve("cpu", "float64")
    with pytest.raises(ConfigError, match="not a torch device"):
        Placement.resolve("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Placement.resolve("cuda")


def job():
    spec = importlib.util.spec_from_file_location("geoseg_job", ROOT / "jobs" / "geoseg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv, capsys):
    code = job().main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("grounder", ["qwen2_5_vl", "qwen3_vl", "gemma3", "paligemma"])
def test_the_job_grounds_with_each_grounder(hub, grounder, tmp_path, capsys, monkeypatch):
    budgets = []
    from transformers import GenerationMixin

    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        budgets.append((kwargs["max_new_tokens"], out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    code, out, err = run([SCENE, "--query", "the largest field", "--grounder", hub[grounder], "--sam3", hub["sam3"],
                          "--routes", "text", "--max-new-tokens", "6", "--out", tmp_path], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["answer"] and (record["box"] is not None or record["reason"])
    assert len(budgets) == 1 and budgets[0][0] == 6 and 1 <= budgets[0][1] <= 6


@pytest.mark.parametrize("points", ["sam", "sam2", "sam3"])
def test_the_job_segments_a_box_by_each_point_route_and_the_sam3_text_route(hub, points, tmp_path, capsys):
    code, out, err = run([SCENE, "--query", "the field", "--box", "100,120,220,200", "--clip", hub["clip"],
                          "--points", hub[points], "--sam3", hub["sam3"], "--text-score-threshold", "0",
                          "--out", tmp_path], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["refined"] == [76, 104, 232, 208] and record["case"] in ("both", "points", "text", "none")
    assert len(record["points"]) >= 1


def test_the_job_loads_every_model_in_bfloat16_when_asked(hub, tmp_path, capsys):
    from magseg_ray.geoseg.config import GeoSegConfig
    from magseg_ray.geoseg.run import ModelsConfig, build_pipeline

    models = ModelsConfig(grounder=hub["qwen3_vl"], clip=hub["clip"], points=hub["sam2"], sam3=hub["sam3"],
                          device="cpu", dtype="bfloat16", max_new_tokens=5)
    pipeline = build_pipeline(models, GeoSegConfig())
    dtypes = {m.dtype for m in (pipeline.grounder.model, pipeline.points.surgery.clip,
                                pipeline.points.segmenter.model, pipeline.text.model)}
    assert dtypes == {torch.bfloat16} and pipeline.grounder.max_new_tokens == 5
    r = pipeline.segment(IMAGE, "the field", box=(10, 10, 80, 70))
    assert r.mask.shape == IMAGE.shape[:2] and r.refined == (0, 0, 87, 76)
    code, _, err = run([SCENE, "--query", "field", "--box", "0,0,50,50", "--clip", hub["clip"], "--points",
                        hub["sam"], "--routes", "points", "--dtype", "bfloat16", "--device", "cpu", "--out", tmp_path],
                       capsys)
    assert code == 0, err
    with pytest.raises(SystemExit):
        run([SCENE, "--query", "field", "--box", "0,0,50,50", "--clip", hub["clip"], "--points", hub["sam"],
             "--dtype", "float64", "--out", tmp_path], capsys)
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_route_a_defaults_to_the_sam3_tracker_of_the_hub_sam3_folder(hub):
    from magseg_ray.geoseg.config import GeoSegConfig
    from magseg_ray.geoseg.run import ModelsConfig, build_pipeline

    pipeline = build_pipeline(ModelsConfig(clip=hub["clip"], sam3=hub["sam3"]), GeoSegConfig())
    assert pipeline.points.segmenter.kind == "sam3_video" and type(pipeline.points.segmenter.model).__name__ == "Sam3TrackerModel"
    sam = build_pipeline(ModelsConfig(clip=hub["clip"], points=hub["sam"], sam3=hub["sam3"]), GeoSegConfig())
    assert sam.points.segmenter.kind == "sam"  # SAM v1 (and SAM 2.1) stay options
