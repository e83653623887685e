import numpy as np
import pytest

from magseg_ray.errors import ModelLoadError, QueryError
from magseg_ray.geoseg.config import GeoSegConfig
from magseg_ray.geoseg.grounder import Grounder
from magseg_ray.geoseg.pipeline import GeoSeg, ModelFolders, load_geoseg

IMAGE = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipeline(geoseg_presets):
    p = geoseg_presets
    return load_geoseg(ModelFolders(str(p["grounder"]), str(p["clip"]), str(p["sam"]), str(p["sam3"])),
                       GeoSegConfig(text_score_threshold=0.0))


def test_a_given_box_is_refined_segmented_and_fused_inside(pipeline):
    r = pipeline.segment(IMAGE, "the field", box=(40, 30, 90, 70))
    assert r.box == (40, 30, 90, 70) and r.refined == (30, 22, 95, 74)
    outside = r.mask.copy()
    outside[22:74, 30:95] = False
    assert not outside.any()
    assert r.case in ("both", "points", "text") and r.mask.any() and r.reason == ""
    assert set(r.seconds) == {"grounding", "refinement", "points", "text", "fusion"}
    assert all(30 <= x < 95 and 22 <= y < 74 for x, y, _ in r.points)


@pytest.mark.parametrize("routes", ["points", "text"])
def test_ablations_run_one_route(pipeline, routes):
    single = GeoSeg(pipeline.grounder, pipeline.points, pipeline.text,
                    GeoSegConfig(routes=routes, refine=False, text_score_threshold=0.0))
    r = single.segment(IMAGE, "the field", box=(40, 30, 90, 70))
    assert r.refined == (40, 30, 90, 70) and r.case in (routes, "none")
    assert r.seconds[{"points": "text", "text": "points"}[routes]] < 0.01
    route = {"points": pipeline.points.segmenter, "text": pipeline.text}[routes]
    assert r.score == (route.last_score if r.case == routes else None)  # the route's own score


def test_the_score_of_a_fused_mask_is_the_mean_of_its_routes(pipeline):
    r = pipeline.segment(IMAGE, "the field", box=(40, 30, 90, 70))
    scores = {"points": pipeline.points.segmenter.last_score, "text": pipeline.text.last_score}
    used = [scores[n] for n in (("points", "text") if r.case == "both" else (r.case,))]
    assert r.case != "none" and r.score == pytest.approx(sum(used) / len(used)) and 0 <= r.score <= 1


def test_a_box_outside_the_image_gives_an_empty_mask_and_the_reason(pipeline):
    r = pipeline.segment(IMAGE, "the field", box=(500, 500, 600, 600))
    assert not r.mask.any() and "no pixel inside" in r.reason


def test_the_random_grounder_answers_without_a_box_and_the_mask_is_empty(pipeline):
    r = pipeline.segment(IMAGE, "the largest field")
    assert r.box is None and not r.mask.any() and r.reason and r.answer


def test_bad_queries_are_refused(pipeline):
    with pytest.raises(QueryError, match="empty"):
        pipeline.segment(IMAGE, "   ")
    with pytest.raises(QueryError, match="too long"):
        pipeline.segment(IMAGE, "field " * 3000)


def test_a_grounder_folder_of_the_wrong_kind_is_refused(geoseg_presets):
    with pytest.raises(ModelLoadError, match="grounder"):
        Grounder.load(geoseg_presets["clip"])


LONG = "the field next to the canal " * 834  # 5,004 words


@pytest.mark.parametrize("routes, names", [("both", "CLIP"), ("points", "CLIP"), ("text", "SAM3")])
def test_a_long_query_with_a_box_is_refused_by_name_on_every_route(pipeline, routes, names):
    one = GeoSeg(pipeline.grounder, pipeline.points, pipeline.text, GeoSegConfig(routes=routes))
    with pytest.raises(QueryError, match=rf"query 'the field next to the canal.*\(5004 words\).*{names}.*over .*(77|48)"):
        one.segment(IMAGE, LONG, box=(40, 30, 90, 70))


def test_a_query_over_sam3s_shorter_context_is_refused_even_when_clip_takes_it(pipeline):
    words = "field " * 25  # fits CLIP's 77 tokens in every template, not SAM3's 48
    assert pipeline.points.surgery.phrase_problem(words) is None
    with pytest.raises(QueryError, match="SAM3.*over its context of 48"):
        pipeline.segment(IMAGE, words, box=(40, 30, 90, 70))


def test_a_grounder_phrase_too_long_for_a_route_is_an_empty_mask_with_the_reason(pipeline):
    from magseg_ray.geoseg.grounder import Grounding
    from magseg_ray.geoseg.parsing import Parsed

    chatty = GeoSeg(lambda image, query: Grounding("...", Parsed((40, 30, 90, 70), "field " * 25)),
                    pipeline.points, pipeline.text, pipeline.config)
    r = chatty.segment(IMAGE, "the field")
    assert not r.mask.any() and "grounder's phrase" in r.reason and "SAM3" in r.reason


def test_the_tiny_run_prompts_the_sam3_tracker_with_the_keypoints(geoseg_presets):
    from magseg_ray.geoseg.run import ModelsConfig, build_pipeline

    tiny = build_pipeline(ModelsConfig(tiny=str(geoseg_presets["grounder"].parent)), GeoSegConfig(routes="points"))
    assert tiny.points.segmenter.kind == "sam3_tracker"
