"""benchmarks/serve.py runs, stops by itself and prints one JSON line (slow: its own Ray and Serve)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_benchmark(capsys):
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiles", "2", "--overload", "8"])
    assert result["cold"]["ok"] == result["cached"]["ok"] == 2 and result["cached_speedup"] > 1
    assert result["overload"]["http_503"] >= 1 and result["overload"]["timeouts"] == 0
    assert capsys.readouterr().out.strip().count("\n") == 0
