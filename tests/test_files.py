import pytest

from magseg_ray.files import replace_atomically, write_atomic


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
