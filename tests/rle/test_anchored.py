"""Tests of the anchored codec: round trips, totality of the lenient decoder, repairs, strict mode."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magseg_ray.errors import MaskTextError, SchemaError
from magseg_ray.masks.schemas import SCHEMAS
from magseg_ray.rle.anchored import decode, encode, longest_text
from magseg_ray.rle.codec import DecodeReport
from tests.rle.test_codec import JUNK_TEXT, check_repair, grid, noise_masks, rect_masks

FAST = settings(max_examples=200, deadline=None)


@FAST
@given(st.one_of(noise_masks(), rect_masks()))
def test_round_trip(case):
    schema, mask = case
    text = encode(mask, schema)
    out, report = decode(text, *mask.shape, schema, strict=True)
    np.testing.assert_array_equal(out, mask)
    assert out.dtype == np.uint8
    assert report.ok
    assert len(text) <= longest_text(*mask.shape)


@FAST
@given(
    st.one_of(st.text(max_size=80), JUNK_TEXT, st.text(alphabet=st.sampled_from(list("bfex0123456789::\n\n ")),
                                                            max_size=120)),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from(sorted(SCHEMAS)),
)
def test_lenient_decode_is_total(text, h, w, schema):
    out, report = decode(text, h, w, schema)
    assert out.shape == (h, w)
    assert out.dtype == np.uint8
    assert out.max() < len(SCHEMAS[schema].classes)
    assert isinstance(report, DecodeReport)


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        (["ffff"] * 4, "0:f"),
        (["ffeb", "ffeb", "bbbb", "bbbb"], "0:f2e3b\n2:b"),
        (["bfff", "ffff", "ffff", "bbff"], "0:b1f\n1:f\n3:b2f"),
        (["fb", "fb", "ee"], "0:f1b\n2:e"),
        (["f"], "0:f"),
    ],
)
def test_examples(rows, text):
    mask = grid(rows)
    assert encode(mask, "fields3") == text
    out, report = decode(text, *mask.shape, "fields3", strict=True)
    np.testing.assert_array_equal(out, mask)
    assert report.ok


def test_issue_example_and_two_digit_numbers():
    mask = np.zeros((32, 32), np.uint8)
    mask[:12, :20], mask[:12, 20:22] = 1, 2
    assert encode(mask, "fields3") == "0:f20e22b\n12:b"
    assert encode(grid(["tcpw", "tcpw"], "alu"), SCHEMAS["alu"]) == "0:t1c2p3w"


def test_longest_text_is_reached():
    mask = np.indices((12, 12)).sum(0).astype(np.uint8) % 2  # a checkerboard: every pixel a run
    assert len(encode(mask, "fields3")) == longest_text(12, 12)


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("0:f1f\n1:f", ["ffff"] * 4),  # adjacent runs of one class, consecutive equal lines
        ("0:f2b4\n2:e", ["ffbb", "ffbb", "eeee", "eeee"]),  # last run's end fills the row exactly
        ("  0:f\r\n2:b\n\n", ["ffff", "ffff", "bbbb", "bbbb"]),  # outer whitespace and CR
    ],
)
def test_non_canonical_valid_text(text, rows):
    out, report = decode(text, 4, 4, "fields3", strict=True)
    np.testing.assert_array_equal(out, grid(rows))
    assert report.ok
    canonical = encode(out, "fields3")
    assert canonical != text
    assert decode(canonical, 4, 4, "fields3", strict=True)[0].tolist() == out.tolist()


# text, expected rows (4x4 fields3), the one counter that is set, its value
REPAIRS = [
    ("0:f2e3\n1:b", ["ffee", "bbbb", "bbbb", "bbbb"], "short_rows", 1),  # no shift into row 1
    ("0:e1f3\n1:b3\n2:f\n3:e", ["efff", "bbbb", "ffff", "eeee"], "short_rows", 2),
    ("0:f3e5\n1:b", ["fffe", "bbbb", "bbbb", "bbbb"], "long_rows", 1),
    ("0:f4e\n1:b", ["ffff", "bbbb", "bbbb", "bbbb"], "long_rows", 1),
    ("0:x2f\n1:e", ["bbff", "eeee", "eeee", "eeee"], "unknown_classes", 1),
    ("0:f?\n2:b", ["ffff", "ffff", "bbbb", "bbbb"], "syntax_errors", 1),  # junk
    ("0:f\n\n3:b", ["ffff", "ffff", "ffff", "bbbb"], "syntax_errors", 1),  # empty line
    ("0:f\n2:\n3:b", ["ffff", "ffff", "ffff", "bbbb"], "syntax_errors", 1),  # a line without runs
    ("f2b\n1:e", ["ffbb", "eeee", "eeee", "eeee"], "syntax_errors", 1),  # no row index: row 0
    ("0:f\nb", ["ffff", "bbbb", "bbbb", "bbbb"], "syntax_errors", 1),  # no index: after the previous
    ("0f2b\n1:e", ["ffbb", "eeee", "eeee", "eeee"], "syntax_errors", 1),  # no ':'
    ("0:f\n02:b", ["ffff", "ffff", "bbbb", "bbbb"], "syntax_errors", 1),  # leading zero in a row
    ("0:f02b\n1:e", ["ffbb", "eeee", "eeee", "eeee"], "syntax_errors", 1),  # leading zero in an end
    ("0:fe2b\n1:e", ["febb", "eeee", "eeee", "eeee"], "syntax_errors", 1),  # a middle run without end
    ("0:f2e2b\n1:e", ["ffbb", "eeee", "eeee", "eeee"], "syntax_errors", 1),  # an end not after the last
    ("0:f\n2:e\n1:b", ["ffff", "ffff", "eeee", "eeee"], "syntax_errors", 1),  # rows going back
    ("0:f\n2:e\n2:b", ["ffff", "ffff", "eeee", "eeee"], "syntax_errors", 1),  # a row twice
    ("0:f\n3:e\n4:b\n9:f", ["ffff", "ffff", "ffff", "eeee"], "extra_rows", 2),
    ("2:f\n3:e", ["ffff", "ffff", "ffff", "eeee"], "missing_rows", 2),
    ("", ["bbbb"] * 4, "missing_rows", 4),
]


@pytest.mark.parametrize(("text", "rows", "kind", "count"), REPAIRS)
def test_repairs(text, rows, kind, count):
    check_repair(decode, text, rows, kind, count)


def test_strict_messages_name_the_line():
    with pytest.raises(MaskTextError, match=r"^line 3: row has 30 of 32 pixels$"):
        decode("0:f\n1:b\n2:f10e30\n3:b", 32, 32, "fields3", strict=True)
    with pytest.raises(MaskTextError, match=r"^line 2: unknown class code 'x'"):
        decode("0:f\n1:x\n2:b", 4, 4, "fields3", strict=True)
    with pytest.raises(MaskTextError, match=r"^line 1: text starts at row 2, not row 0$"):
        decode("2:f", 4, 4, "fields3", strict=True)


def test_many_errors_are_all_counted():
    text = "0:x2f9\n\n!!\n3:e\n1:b\n7:f"
    out, report = decode(text, 5, 3, "fields3")
    np.testing.assert_array_equal(out, grid(["bbf", "bbf", "bbf", "eee", "eee"]))
    assert report.as_dict() == {
        "short_rows": 0,
        "long_rows": 1,
        "unknown_classes": 1,
        "syntax_errors": 5,  # the empty line, the line of junk (no index, "!!", no runs), row 1 after row 3
        "extra_rows": 1,
        "missing_rows": 0,
    }


def test_huge_numbers_are_repaired():
    text = "0:f" + "1" * 5000 + "e\n" + "9" * 5000 + ":b"
    out, report = decode(text, 3, 4, "fields3")
    np.testing.assert_array_equal(out, grid(["ffff"] * 3))
    assert (report.long_rows, report.extra_rows) == (1, 1)


def test_encode_rejects_bad_masks():
    with pytest.raises(SchemaError):
        encode(np.full((2, 2), 3, dtype=np.uint8), "fields3")
    with pytest.raises(SchemaError):
        encode(np.zeros((0, 4), dtype=np.uint8), "fields3")
