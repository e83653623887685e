"""The mapping decoder's drafts: guesses from an answer's own text, checked by the model all at once,
and the cache bookkeeping they need (rejected drafts masked, holes compacted before a window)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.cache_utils import DynamicSlidingWindowLayer

from magseg_ray.model.batching import _Answers, _compact, _make_room, _Rows, answer_chips
from magseg_ray.model.card import read_model_prompt
from magseg_ray.model.checkpoint import DEMO_MODEL, load_model
from magseg_ray.model.generate import GenerationSettings, answer_patches
from magseg_ray.prompt import build_patch_prompt, patch_boxes


def _rows(attention: list[list[int]], window: int) -> _Rows:
    """Rows whose cached key and value at slot j is j (one head, one dimension), in a sliding layer."""
    attention = torch.tensor(attention)
    b, length = attention.shape
    layer = DynamicSlidingWindowLayer(sliding_window=window)
    slots = torch.arange(length, dtype=torch.float32).expand(b, 1, length)[..., None].contiguous()
    layer.update(slots, slots.clone())
    return _Rows([(0, r) for r in range(b)], SimpleNamespace(layers=[layer]), attention, attention.sum(1, keepdim=True) - 1)


def test_compacting_moves_each_rows_tokens_to_the_right_in_order_and_cuts_empty_columns():
    rows = _rows([[0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 1, 1]], window=64)
    _compact(rows)
    assert rows.attention.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    keys = rows.cache.layers[0].keys[:, 0, :, 0]
    assert keys[0, 2:].tolist() == [1, 2, 4] and keys[1].tolist() == [0, 1, 3, 4, 5]
    assert torch.equal(rows.cache.layers[0].values, rows.cache.layers[0].keys)


def test_drafts_fit_inside_a_sliding_window_and_holes_are_closed_only_while_every_slot_is_kept():
    whole = _rows([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]], window=16)
    assert _make_room(whole, 12) == 6 and _make_room(whole, 3) == 3  # 8 + 1 + 6 slots fit in 15
    holes = _rows([[1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]], window=16)
    assert _make_room(holes, 4) == 4  # 5 free slots in each row, 2 left in the window: compacted
    assert holes.attention.shape[1] == 7 and holes.attention.all()
    assert holes.cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 3, 4, 6, 8, 10, 11]
    sparse = _rows([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0, 1, 0, 1, 1]], window=64)
    assert _make_room(sparse, 4) == 4 and sparse.attention.shape[1] == 4  # more than half free: compacted
    past = _rows([[0] * 10 + [1] * 10, [1] * 20], window=16)  # the window already dropped 5 slots
    assert _make_room(past, 4) == 0 and past.attention.shape[1] == 20
    assert past.cache.layers[0].keys.shape[2] == 15


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_answers_tail():
    answers = _Answers(None, ["a"], 100, None, None, [0])
    answers.tokens["a"] += [5, 6, 7, 8]
    assert answers.draft("a", 4) == []  # 8 never came before
    answers.tokens["a"] += [5, 6]
    assert answers.draft("a", 3) == [7, 8, 5]  # (8, 5, 6) is new; (5, 6) was followed by 7, 8, 5, 6
    answers.tokens["a"] += [9, 5, 6]
    assert answers.draft("a", 8) == [9, 5, 6]  # the latest (5, 6) wins


@pytest.fixture(scope="module")
def demo():
    """The demo model and card, and the first demo chip (its answers repeat rows, as real ones do)."""
    from magseg_ray.map_region import demo_chips

    card = read_model_prompt(DEMO_MODEL)
    return (*load_model(DEMO_MODEL), card, demo_chips(card.chip_size, 1)[0])


def test_drafts_leave_the_demo_models_answers_unchanged_in_far_fewer_passes(demo):
    model, processor, card, chip = demo
    boxes = patch_boxes(card.chip_size, card.chip_size, card.patch_size)
    passes = []
    hook = model.register_forward_hook(lambda *_: passes.append(1))
    runs = {}
    for draft in (0, 12):
        passes.clear()
        settings = GenerationSettings(64, boundary_bias=card.boundary_bias, draft_tokens=draft)
        runs[draft] = (answer_chips(model, processor, [(chip, boxes)], card.prompt(), settings)[0], len(passes))
    hook.remove()
    (plain, plain_passes), (drafted, drafted_passes) = runs[0], runs[12]
    assert [a.text for a in drafted] == [a.text for a in plain]
    assert np.allclose([a.confidence for a in drafted], [a.confidence for a in plain], atol=1e-5)
    assert max(len(a.text) for a in plain) > 60  # long, row-repeating answers: what drafts are for
    assert drafted_passes < 0.6 * plain_passes
    longest = sorted(range(len(boxes)), key=lambda j: len(plain[j].text))[-2:]
    naive = answer_patches(model, processor, [build_patch_prompt(chip, boxes[j], card.prompt()) for j in longest],
                           card.prompt(), GenerationSettings(1, boundary_bias=card.boundary_bias))
    assert [a.text for a in naive] == [drafted[j].text for j in longest]


def test_negative_draft_tokens_are_refused():
    from magseg_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="draft_tokens"):
        GenerationSettings(draft_tokens=-1)
