"""The jobs' one way of refusing bad input: ``error: ...`` on stderr, exit status 2."""

import importlib.util
from pathlib import Path

from magseg_ray.errors import BAD_INPUT, ConfigError, bad_input_exit

ROOT = Path(__file__).resolve().parents[1]


def test_a_refusal_is_one_line_on_stderr_and_status_2(capsys):
    assert bad_input_exit(ConfigError("--data: missing")) == BAD_INPUT == 2
    assert capsys.readouterr().err == "error: --data: missing\n"


def test_a_job_refusing_without_an_exception_exits_the_same_way(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_job", ROOT / "jobs" / "make_geoseg_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "scenes").mkdir()
    (tmp_path / "out").mkdir()  # make_bench writes items.jsonl into an existing folder only
    assert module.main([str(tmp_path / "scenes"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: no labelled scene with fields under {tmp_path / 'scenes'}\n"
