"""The replica's chips: cached, or read and decoded in one batched model call for every request.

Tile requests ask :meth:`ChipBatcher.chip` for the chips they need. Chips in the
:class:`~magseg_ray.serve.cache.ChipCache` come back at once; the others go through one
``@serve.batch`` method, which gathers the chips of all concurrent requests into one model call,
computes each distinct chip once (neighbouring tiles share chips), decodes them in one continuous
batch (:meth:`~magseg_ray.model.segmenter.ChipSegmenter.segment_chips`) and caches them. A scene
that cannot be read, or a chip the model cannot take, gives its
:class:`~magseg_ray.errors.SceneError` to the requests that asked for it, not to the others.

The cache key holds ``model_key`` (:func:`model_key`): a retrained model or other decoding settings
never see stale chips.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict

from ray import serve

from magseg_ray.chips.pipeline import patches_to_answer
from magseg_ray.chips.read import ReadConfig, read_chip
from magseg_ray.errors import MagsegError, SceneError
from magseg_ray.serve.cache import ChipCache


def model_key(fingerprint: str, card, max_new_tokens: int) -> str:
    """The part of a chip's cache key that names the model and its decoding: the weights'
    fingerprint, the card, the chip size and the answer token budget."""
    return hashlib.sha256(json.dumps([fingerprint, asdict(card), card.chip_size, max_new_tokens]).encode()).hexdigest()[:16]


class ChipBatcher:
    """A replica's chip source: its cache, its model, and the counters ``/healthz`` shows."""

    def __init__(self, segmenter, store, key: str, cache_bytes: int, max_batch: int, wait_s: float,
                 read: ReadConfig = ReadConfig()):
        self.segmenter, self.store, self.key, self.read = segmenter, store, key, read
        self.patch_size = segmenter.prompt.patch_size
        self.cache = ChipCache(cache_bytes)
        self.counters = {"chips_computed": 0, "model_calls": 0, "largest_call": 0, "chip_requests": 0}
        self._segment_batch.set_max_batch_size(max_batch)
        self._segment_batch.set_batch_wait_timeout_s(wait_s)

    def _cache_key(self, task) -> tuple:
        return (task.scene_id, task.row_off, task.col_off, self.key)

    async def chip(self, task):
        """``(classes, confidence)`` of the chip ``task``: from the cache, else from a batched model call."""
        self.counters["chip_requests"] += 1
        hit = self.cache.get(self._cache_key(task))
        if hit is not None:
            return hit
        result = await self._segment_batch(task)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _segment_batch(self, tasks: list) -> list:
        return await asyncio.to_thread(self.segment_many, tasks)

    def segment_many(self, tasks: list) -> list:
        """One model call: every distinct chip of ``tasks`` not in the cache, read, then decoded in
        one continuous batch; each task's chip or :class:`SceneError`, in order."""
        self.counters["model_calls"] += 1
        self.counters["largest_call"] = max(self.counters["largest_call"], len(tasks))
        done: dict = {}
        read: list = []
        for task in dict.fromkeys(tasks):
            done[task] = self.cache.get(self._cache_key(task))
            if done[task] is None:
                try:
                    read.append((task, read_chip(task, self.read, store=self.store)))
                except MagsegError as e:
                    done[task] = SceneError(f"scene {task.scene_id} cannot be read: {e}")
        chips = [(chip.image, chip.valid, patches_to_answer(chip.valid, self.patch_size)) for _, chip in read]
        for (task, _), value in zip(read, self.segmenter.segment_chips(chips) if chips else []):
            if isinstance(value, MagsegError):
                value = SceneError(f"scene {task.scene_id}: the model cannot take the chip at row {task.row_off}, "
                                   f"column {task.col_off}: {value}")
            else:
                self.cache.put(self._cache_key(task), value)
                self.counters["chips_computed"] += 1
            done[task] = value
        return [done[t] for t in tasks]
