import dataclasses

import pytest

from magseg_ray.files import local_absolute, replace_atomically, write_atomic


def test_write_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_atomic(path, "one")
    write_atomic(path, b"two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "a.tif", b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.tif"]


def test_local_paths_become_absolute_and_the_rest_stays_as_typed(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert local_absolute("model") == str(tmp_path / "model")
    assert local_absolute("./model/../model") == str(tmp_path / "model")
    for kept in ("s3://bucket/scenes", "small", "missing/model", ""):
        assert local_absolute(kept) == kept


def test_training_configs_ship_absolute_local_paths_to_workers(tmp_path, monkeypatch):
    """Ray Train workers do not run in the driver's directory: a relative ``--base`` passed the
    driver's checks and then failed on every worker (found running ``jobs/sft.py``)."""
    from magseg_ray.train.grpo import GRPOConfig
    from magseg_ray.train.sft import SFTConfig

    for name in ("model", "scenes"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    sft = SFTConfig(base="model", data="scenes")
    assert (sft.base, sft.data) == (str(tmp_path / "model"), str(tmp_path / "scenes"))
    assert SFTConfig(base="tiny").base == "tiny" and SFTConfig(data="s3://b/x").data == "s3://b/x"
    grpo = GRPOConfig(model="model", adapter="model", data="scenes")
    assert {grpo.model, grpo.adapter, grpo.data} == {str(tmp_path / "model"), str(tmp_path / "scenes")}
    assert SFTConfig(**dataclasses.asdict(sft)) == sft  # rebuilt on the workers from the shipped dict
