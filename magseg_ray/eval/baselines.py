"""Baselines a field model must beat, as class masks in schema ``fields3`` (or any schema with
``field`` at index 1):

- ``everything``: every pixel is field (one instance per connected scene).
- ``threshold``: a colour/texture rule with no training. Cropland in VHR RGB has fine texture,
  while roads, roofs, water and tree crowns stand out by brightness, darkness or coarse texture.
  Field = grey level between the scene's 10th and 90th percentiles and local texture (3x3
  standard deviation of grey, smoothed over 7x7) below its Otsu threshold, then a 5x5 opening;
  strong edges inside fields (Sobel magnitude above its 90th percentile) are written as boundary,
  so touching fields can split into instances.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BASELINES = ("everything", "threshold")


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def baseline_classes(image: np.ndarray, method: str) -> np.ndarray:
    """``H x W`` uint8 class mask (0 background, 1 field, 2 boundary) of an ``H x W x 3`` image."""
    h, w = image.shape[:2]
    if method == "everything":
        return np.ones((h, w), np.uint8)
    if method != "threshold":
        raise ValueError(f"unknown baseline {method!r}; known: {', '.join(BASELINES)}")
    grey = image.astype(np.float32).mean(axis=2)
    mean = ndimage.uniform_filter(grey, 3)
    texture = ndimage.uniform_filter(np.sqrt(np.maximum(ndimage.uniform_filter(grey**2, 3) - mean**2, 0)), 7)
    lo, hi = np.percentile(grey, [10, 90])
    field = (grey > lo) & (grey < hi) & (texture < _otsu(texture.ravel()))
    field = ndimage.binary_opening(field, np.ones((5, 5), bool))
    edges = np.hypot(ndimage.sobel(mean, 0), ndimage.sobel(mean, 1))
    classes = field.astype(np.uint8)
    classes[field & (edges > np.percentile(edges, 90))] = 2
    return classes
