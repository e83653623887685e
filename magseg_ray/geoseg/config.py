"""Every GeoSeg constant in one place, with the paper's values as defaults.

:class:`GeoSegConfig` holds the method's constants (box widening, keypoint selection, fusion
validity, segmenter thresholds) and the ablation switches the paper's ablation table uses
(no box refinement, point route only, text route only). Jobs turn it into flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError

ROUTES = ("both", "points", "text")
"""Values of :attr:`GeoSegConfig.routes`: both routes fused, route A (points) only, route B (text) only."""


@dataclass(frozen=True)
class GeoSegConfig:
    """GeoSeg's constants (paper defaults) and ablation switches."""

    alpha: float = field(default=0.2, metadata=doc(
        "box refinement: widen the grounded box by alpha x its width/height toward the top-left "
        "(MLLM boxes are biased to start late)"))
    beta: float = field(default=0.1, metadata=doc(
        "box refinement: widen by beta x width/height toward the bottom-right"))
    top_k: int = field(default=5, metadata=doc(
        "route A: at most this many CLIP Surgery keypoints become point prompts"))
    tau: float = field(default=0.3, metadata=doc(
        "route A: a keypoint's min-max normalised similarity must be >= tau; no keypoint -> route invalid"))
    nms_radius: int = field(default=8, metadata=doc(
        "route A: keypoints are local maxima of the similarity map within a (2r+1)-px square of the "
        "crop, and kept keypoints are more than r px apart (greedy NMS by score)"))
    gamma: float = field(default=0.01, metadata=doc(
        "fusion: a route's mask is valid when its area / refined box area >= gamma"))
    text_score_threshold: float = field(default=0.5, metadata=doc(
        "route B: SAM3 instances with sigmoid(logit) x sigmoid(presence) > this are kept and unioned"))
    mask_threshold: float = field(default=0.5, metadata=doc(
        "SAM masks: a pixel is in the mask when its probability (sigmoid of the mask logit) > this, after "
        "the bilinear resize each processor does (SAM3: of the probabilities; SAM, SAM2, SAM3 tracker: of the logits)"))
    refine: bool = field(default=True, metadata=doc(
        "ablation: widen the grounded box (--no-refine segments inside the raw clamped box)"))
    routes: str = field(default="both", metadata=doc(
        "ablation: both (fused), points (route A only), text (route B only)", choices=list(ROUTES)))

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "tau", "text_score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.nms_radius < 0:
            raise ConfigError(f"nms_radius must be >= 0, got {self.nms_radius}")
        if self.routes not in ROUTES:
            raise ConfigError(f"routes must be one of {', '.join(ROUTES)}, got {self.routes!r}")


ABLATIONS: dict[str, dict] = {
    "full": {},
    "no_refine": {"refine": False},
    "points_only": {"routes": "points"},
    "text_only": {"routes": "text"},
}
"""The paper's ablation rows as overrides of :class:`GeoSegConfig` (what ``--bench`` reports side by side)."""
