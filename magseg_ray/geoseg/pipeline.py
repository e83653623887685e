"""GeoSeg end to end on one image: ground, refine, segment by two routes, fuse.

:class:`GeoSeg` takes its parts injected, so any of them can be swapped (another grounder, SAM
for SAM3 tracker, the MAgSeg field model as the text route, or a given box instead of a
grounder): a grounder is ``(image, query) -> Grounding``; a route is ``(crop, phrase) -> mask
or None``, or has ``segment_box(image, box, phrase)`` when it needs the scene around the box
(the field routes of :mod:`.fieldroute`). :class:`PointRoute` is route A (CLIP Surgery map -> keypoints -> point segmenter).
A route with a text encoder has ``phrase_problem(phrase) -> str or None``: a phrase its encoder
would cut is never sent. A query that is the phrase (a given box, or a grounder answer without
a label) is then refused as :class:`~magseg_ray.errors.QueryError` naming the query and the
limit; a grounder's over-long label is an empty mask with that reason.
The ablation switches of :class:`~.config.GeoSegConfig` pick the routes and the refinement.

Every call returns a :class:`Result`; when there is nothing to segment (no box in the answer,
a box outside the image, no valid route) its mask is empty and ``reason`` says why: never an
exception for a model's bad answer, never a silent full-box mask. User errors (an empty or
too-long query) raise :class:`~magseg_ray.errors.QueryError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magseg_ray.errors import ChipError, QueryError
from magseg_ray.geoseg.boxes import Box, clamp_box, widen_box
from magseg_ray.geoseg.config import GeoSegConfig
from magseg_ray.geoseg.fusion import fuse
from magseg_ray.geoseg.grounder import check_query, describe_query
from magseg_ray.geoseg.points import select_points


@dataclass
class PointRoute:
    """Route A: similarity map of the crop to the phrase -> top-k NMS keypoints -> point segmenter."""

    surgery: object
    """``similarity(crop, phrase) -> H x W`` map in [0, 1] (a :class:`.clip_surgery.ClipSurgery`)."""
    segmenter: object
    """``(crop, points) -> mask or None`` (a :class:`.segmenters.PointSegmenter`)."""
    config: GeoSegConfig = GeoSegConfig()
    last_points: list = field(default_factory=list)

    def phrase_problem(self, phrase: str) -> str | None:
        return self.surgery.phrase_problem(phrase)

    @property
    def last_score(self) -> float | None:
        return getattr(self.segmenter, "last_score", None)

    def __call__(self, crop: np.ndarray, phrase: str) -> np.ndarray | None:
        sim = self.surgery.similarity(crop, phrase)
        self.last_points = select_points(sim, self.config.top_k, self.config.tau, self.config.nms_radius)
        return self.segmenter(crop, self.last_points) if self.last_points else None


@dataclass
class Result:
    """One query's answer on one image."""

    mask: np.ndarray
    """``H x W`` bool of the image."""
    phrase: str = ""
    """The object phrase the routes were prompted with (the grounder's, else the query)."""
    box: Box | None = None
    """The grounded box clamped to the image, before refinement."""
    refined: Box | None = None
    """The box the routes segmented (widened unless refinement is off)."""
    case: str = "none"
    """Fusion case: both, points, text or none."""
    reason: str = ""
    """Why the mask is empty; empty when it is not."""
    answer: str = ""
    """The grounder's raw answer ('' when a box was given)."""
    points: list = field(default_factory=list)
    """Route A's keypoints, (x, y, score) in image pixels."""
    seconds: dict = field(default_factory=dict)
    """Wall time per stage: grounding, refinement, points, text, fusion."""
    score: float | None = None
    """The mask's score: the mean of the own scores of the routes fused into it (route A: the point
    segmenter's predicted IoU; route B: SAM3's best kept instance score); None for an empty mask, or
    routes without a score of their own (the field routes)."""


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ChipError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    return image


@dataclass
class GeoSeg:
    """The pipeline with its parts injected (any may be None when the configuration does not use it)."""

    grounder: object | None
    points: object | None
    text: object | None
    config: GeoSegConfig = GeoSegConfig()

    def _routes(self) -> tuple[bool, bool]:
        return self.config.routes in ("both", "points"), self.config.routes in ("both", "text")

    def phrase_problem(self, phrase: str) -> str | None:
        """Why a route in use would cut ``phrase`` (the first such route's limit), or None."""
        for route, on in zip((self.points, self.text), self._routes()):
            check = getattr(route, "phrase_problem", None)
            problem = check(phrase) if on and check else None
            if problem:
                return problem
        return None

    def segment(self, image: np.ndarray, query: str, box=None, phrase: str | None = None) -> Result:
        """Segment what ``query`` asks for in ``image``; a ``box`` (x1, y1, x2, y2 pixels, e.g. from
        an earlier grounding) skips grounding, and ``phrase`` then prompts the routes (default: the query)."""
        image, query = check_image(image), check_query(query)
        h, w = image.shape[:2]
        result = Result(np.zeros((h, w), bool), phrase=phrase or query)
        clock = time.perf_counter()
        if box is None:
            if self.grounder is None:
                from magseg_ray.errors import ConfigError

                raise ConfigError("no grounder is loaded: give a box, or a grounder folder")
            grounding = self.grounder(image, query)
            result.answer, parsed = grounding.text, grounding.parsed
            if parsed.box is None:
                result.reason = parsed.reason
                return result
            box, result.phrase = parsed.box, parsed.phrase or query
        result.seconds["grounding"] = time.perf_counter() - clock
        problem = self.phrase_problem(result.phrase)
        if problem and result.phrase == query:
            raise QueryError(f"{describe_query(query)} {problem}: shorten it, or give a grounder that names the object")
        if problem:
            result.reason = f"the grounder's phrase {result.phrase[:40]!r} {problem}"
            return result
        clock = time.perf_counter()
        result.box = clamp_box(box, w, h)
        if result.box is None:
            result.reason = f"the box {tuple(round(float(v), 1) for v in box)} has no pixel inside the {w}x{h} image"
            return result
        c = self.config
        result.refined = widen_box(result.box, w, h, c.alpha, c.beta) if c.refine else result.box
        result.seconds["refinement"] = time.perf_counter() - clock
        self._segment_crop(image, result)
        return result

    def _segment_crop(self, image: np.ndarray, result: Result) -> None:
        x1, y1, x2, y2 = result.refined
        crop = image[y1:y2, x1:x2]
        use_points, use_text = self._routes()
        masks, scores = {}, {}
        for name, route, on in (("points", self.points, use_points), ("text", self.text, use_text)):
            clock = time.perf_counter()
            if not on:
                masks[name] = None
            elif hasattr(route, "segment_box"):  # routes that need the scene around the box
                masks[name] = route.segment_box(image, result.refined, result.phrase)
            else:
                masks[name] = route(crop, result.phrase)
            scores[name] = getattr(route, "last_score", None) if masks[name] is not None else None
            result.seconds[name] = time.perf_counter() - clock
        if use_points:
            result.points = [(x + x1, y + y1, s) for x, y, s in getattr(self.points, "last_points", [])]
        clock = time.perf_counter()
        fused = fuse(masks["points"], masks["text"], result.refined, image.shape[:2], self.config.gamma)
        result.seconds["fusion"] = time.perf_counter() - clock
        result.mask, result.case = fused.mask, fused.case
        used = [scores.get(n) for n in {"both": ("points", "text")}.get(fused.case, (fused.case,))]
        used = [v for v in used if v is not None]
        result.score = sum(used) / len(used) if used else None
        if fused.case == "none":
            result.reason = (f"no route gave a mask covering {self.config.gamma:g} of the box "
                             f"(routes: {self.config.routes})")


@dataclass(frozen=True)
class ModelFolders:
    """Where each component's checkpoint folder is (None: that part is not loaded)."""

    grounder: str | None = None
    clip: str | None = None
    points: str | None = None
    text: str | None = None


def load_geoseg(folders: ModelFolders, config: GeoSegConfig = GeoSegConfig(), text_route=None,
                placement=None, max_new_tokens: int = 96) -> GeoSeg:
    """Load the parts the configuration uses from local folders onto ``placement`` (a
    :class:`~.loading.Placement`; None: CPU, float32); ``text_route`` replaces SAM3;
    ``max_new_tokens`` is the grounder's answer budget."""
    from magseg_ray.errors import ConfigError
    from magseg_ray.geoseg.clip_surgery import ClipSurgery
    from magseg_ray.geoseg.grounder import Grounder
    from magseg_ray.geoseg.loading import Placement
    from magseg_ray.geoseg.segmenters import PointSegmenter, TextSegmenter

    placement = placement or Placement()
    use_points = config.routes in ("both", "points")
    use_text = config.routes in ("both", "text")
    if use_points and not (folders.clip and folders.points):
        raise ConfigError("route A (points) needs a CLIP folder and a SAM / SAM3 tracker folder")
    if use_text and text_route is None and not folders.text:
        raise ConfigError("route B (text) needs a SAM3 folder (or the field route)")
    grounder = Grounder.load(Path(folders.grounder), max_new_tokens, placement) if folders.grounder else None
    points = PointRoute(ClipSurgery.load(folders.clip, placement=placement),
                        PointSegmenter.load(folders.points, config.mask_threshold, placement), config) if use_points else None
    text = text_route
    if use_text and text is None:
        text = TextSegmenter.load(folders.text, config.text_score_threshold, config.mask_threshold, placement)
    return GeoSeg(grounder, points, text, config)
