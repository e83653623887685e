"""benchmarks/serve.py runs, stops by itself and prints one JSON line (slow: its own Ray and Serve)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serve_benchmark(capsys):
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--tiles", "2", "--overload", "8", "--view", "96", "--view-concurrency", "32", "--mixed-cold", "4"])
    assert result["cold"]["ok"] == result["cached"]["ok"] == 2 and result["cached_speedup"] > 1
    assert result["overload"]["http_503"] >= 1 and result["overload"]["timeouts"] == 0
    # a map view's burst of cached tiles with the default admission: every one answered (before: most 503)
    assert result["view"]["ok"] == 96 and result["view"]["http_503"] == result["view"]["lost"] == 0
    # the same burst while uncached tiles are computed: every request answered, cold and cached
    mixed = result["mixed"]
    assert mixed["cold"]["ok"] == 4 and mixed["cached"]["ok"] == 96 and mixed["cached_slowdown"] > 0
    # one JSON line, the result; Ray and DeepSpeed may log other lines to stdout beside it
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["benchmark"] == "serve"
