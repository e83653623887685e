"""The mapping model actor over a numpy batch of chip records, as Ray Data's ``map_batches`` calls it."""

import numpy as np

from magseg_ray.model.segmenter import ChipSegmenter
from magseg_ray.prompt import PromptConfig, patch_boxes
from magseg_ray.run_files import chip_file, decode_chip


def _record(chip_id: str, image: np.ndarray, patch: int, error=None) -> dict:
    h, w = image.shape[:2]
    return {"chip_id": chip_id, "scene_id": "s", "error": error, "image": image, "valid": np.ones((h, w), bool),
            "patches": np.array(patch_boxes(h, w, patch) if h else [], np.int32).reshape(-1, 4)}


def _batch(records: list[dict]) -> dict:
    """Records as a numpy batch: object columns, "no error" as NaN (what Ray Data hands over)."""
    batch = {k: np.empty(len(records), object) for k in records[0]}
    for i, r in enumerate(records):
        for k, v in r.items():
            batch[k][i] = np.nan if k == "error" and v is None else v
    return batch


def test_a_batch_of_chips_is_answered_as_each_chip_alone_and_a_bad_chip_fails_alone(tiny_dir, tmp_path):
    prompt = PromptConfig(patch_size=16)
    actor = ChipSegmenter(str(tiny_dir), prompt, 5, 40, str(tmp_path))
    rng = np.random.default_rng(0)
    a, c = (rng.integers(0, 256, (48, 32, 3), dtype=np.uint8) for _ in range(2))
    records = [_record("a", a, 16), _record("b", np.zeros((0, 0, 3), np.uint8), 16, error="b: cannot read"),
               _record("c", c, 16), _record("d", np.zeros((32, 32, 3), np.float32), 16)]
    out = actor(_batch(records))
    assert out["chip_id"] == ["a", "b", "c", "d"]
    assert out["error"][:3] == [None, "b: cannot read", None] and out["error"][3].startswith("d: chip must be uint8")
    assert out["patches"] == [6, 0, 6, 0] and out["seconds"][0] > 0 and out["seconds"][1] == 0
    for name, image in (("a", a), ("c", c)):  # each chip's mask as the actor answers it alone
        written = decode_chip((tmp_path / chip_file(name)).read_bytes())
        classes, confidence = actor.segment(image, np.ones(image.shape[:2], bool), patch_boxes(48, 32, 16))
        assert np.array_equal(written["classes"], classes) and np.array_equal(written["confidence"], confidence)
    assert not (tmp_path / chip_file("b")).exists() and not (tmp_path / chip_file("d")).exists()
