"""Tests of the R-RLE codec: round trips, totality of the lenient decoder, repairs, strict mode."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magseg_ray.errors import MaskTextError, SchemaError
from magseg_ray.masks.schemas import SCHEMAS, get_schema
from magseg_ray.rle.codec import DecodeReport, decode, encode, encode_text4seg

FAST = settings(max_examples=200, deadline=None)


def grid(rows: list[str], schema: str = "fields3") -> np.ndarray:
    """Mask from rows of class codes, e.g. ``["bff", "eef"]``."""
    s = get_schema(schema)
    return np.array([[s.index_of(c) for c in row] for row in rows], dtype=np.uint8)


@st.composite
def noise_masks(draw):
    schema = draw(st.sampled_from(sorted(SCHEMAS)))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    k = len(SCHEMAS[schema].classes)
    values = draw(st.lists(st.integers(0, k - 1), min_size=h * w, max_size=h * w))
    return schema, np.array(values, dtype=np.uint8).reshape(h, w)


@st.composite
def rect_masks(draw):
    schema = draw(st.sampled_from(sorted(SCHEMAS)))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    k = len(SCHEMAS[schema].classes)
    mask = np.full((h, w), draw(st.integers(0, k - 1)), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 4))):
        r0, r1 = sorted(draw(st.tuples(st.integers(0, h), st.integers(0, h))))
        c0, c1 = sorted(draw(st.tuples(st.integers(0, w), st.integers(0, w))))
        mask[r0:r1, c0:c1] = draw(st.integers(0, k - 1))
    return schema, mask


@FAST
@given(st.one_of(noise_masks(), rect_masks()))
def test_round_trip(case):
    schema, mask = case
    text = encode(mask, schema)
    out, report = decode(text, *mask.shape, schema, strict=True)
    np.testing.assert_array_equal(out, mask)
    assert out.dtype == np.uint8
    assert report.ok


JUNK_TEXT = st.text(
    alphabet=st.sampled_from(list("bfetcpwxzB0123456789**\n\n \r-|")), max_size=120
)


@FAST
@given(
    st.one_of(st.text(max_size=80), JUNK_TEXT),
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
        (["ffff"] * 4, "*f"),
        (["ffeb", "ffeb", "bbbb", "bbbb"], "2*f2e1b\n*b"),
        (["bfff", "ffff", "ffff", "bbff"], "b1f\n2*f\nb2f"),
        (["fb", "fb", "ee"], "2*f1b\ne"),
        (["f"], "f"),
    ],
)
def test_examples(rows, text):
    mask = grid(rows)
    assert encode(mask, "fields3") == text
    out, report = decode(text, *mask.shape, "fields3", strict=True)
    np.testing.assert_array_equal(out, mask)
    assert report.ok


def test_schema_object_and_alu_codes():
    schema = SCHEMAS["alu"]
    mask = grid(["tcpw", "tcpw"], "alu")
    assert encode(mask, schema) == "*t1c1p1w"


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("f1f\n3*f", ["ffff"] * 4),  # adjacent runs of one class
        ("1*f2b\n1*b\n2*e", ["ffbb", "bbbb", "eeee", "eeee"]),  # explicit 1*, explicit last count
        ("4*f", ["ffff"] * 4),
        ("f2b2\n*e", ["ffbb", "eeee", "eeee", "eeee"]),  # last run's length fills the row exactly
        ("  2*f\r\n*b\n\n", ["ffff", "ffff", "bbbb", "bbbb"]),  # outer whitespace and CR
    ],
)
def test_non_canonical_valid_text(text, rows):
    out, report = decode(text, 4, 4, "fields3", strict=True)
    np.testing.assert_array_equal(out, grid(rows))
    assert report.ok
    canonical = encode(out, "fields3")
    assert canonical != text
    assert decode(canonical, 4, 4, "fields3", strict=True)[0].tolist() == out.tolist()
    assert encode(decode(canonical, 4, 4, "fields3")[0], "fields3") == canonical


# text, expected rows (4x4 fields3), the one counter that is set, its value
REPAIRS = [
    ("f2e1\n*b", ["ffee", "bbbb", "bbbb", "bbbb"], "short_rows", 1),  # no shift into row 2
    ("e1f2\nb3\nf\n*e", ["efff", "bbbb", "ffff", "eeee"], "short_rows", 2),
    ("f3e3\n*b", ["fffe", "bbbb", "bbbb", "bbbb"], "long_rows", 1),
    ("f4e\n*b", ["ffff", "bbbb", "bbbb", "bbbb"], "long_rows", 1),
    ("f2e2b1\n*b", ["ffee", "bbbb", "bbbb", "bbbb"], "long_rows", 1),
    ("x2f\n*e", ["bbff", "eeee", "eeee", "eeee"], "unknown_classes", 1),
    ("2*f?\n*b", ["ffff", "ffff", "bbbb", "bbbb"], "syntax_errors", 1),
    ("f\n\n3*b", ["ffff", "bbbb", "bbbb", "bbbb"], "syntax_errors", 1),
    ("f0e2b\n*b", ["eebb", "bbbb", "bbbb", "bbbb"], "syntax_errors", 1),
    ("03*f\nb", ["ffff", "ffff", "ffff", "bbbb"], "syntax_errors", 1),
    ("0*f\n*b", ["ffff", "bbbb", "bbbb", "bbbb"], "syntax_errors", 1),
    ("f2*b\n*e", ["ffbb", "eeee", "eeee", "eeee"], "syntax_errors", 1),
    ("fe2b\n*e", ["feeb", "eeee", "eeee", "eeee"], "syntax_errors", 1),
    ("2*f\n*e\nb\nb", ["ffff", "ffff", "eeee", "eeee"], "extra_rows", 2),
    ("3*f\n3*b", ["ffff", "ffff", "ffff", "bbbb"], "extra_rows", 2),
    ("f\ne\nb\nf\n*e", ["ffff", "eeee", "bbbb", "ffff"], "extra_rows", 1),
    ("f\ne", ["ffff", "eeee", "eeee", "eeee"], "missing_rows", 2),
    ("", ["bbbb"] * 4, "missing_rows", 4),
]


def check_repair(decode, text: str, rows: list[str], kind: str, count: int) -> None:
    """The lenient ``decode`` turns ``text`` into the 4x4 ``rows`` with ``count`` repairs of ``kind``
    and no other; the strict one raises."""
    out, report = decode(text, 4, 4, "fields3")
    np.testing.assert_array_equal(out, grid(rows))
    expected = dict.fromkeys(DecodeReport().as_dict(), 0) | {kind: count}
    assert report.as_dict() == expected
    assert not report.ok
    with pytest.raises(MaskTextError):
        decode(text, 4, 4, "fields3", strict=True)


@pytest.mark.parametrize(("text", "rows", "kind", "count"), REPAIRS)
def test_repairs(text, rows, kind, count):
    check_repair(decode, text, rows, kind, count)


def test_strict_messages_name_the_line():
    with pytest.raises(MaskTextError, match=r"^line 3: row has 30 of 32 pixels$"):
        decode("f\nb\nf10e20\n*b", 32, 32, "fields3", strict=True)
    with pytest.raises(MaskTextError, match=r"^line 2: unknown class code 'x'"):
        decode("f\nx\n*b", 4, 4, "fields3", strict=True)
    with pytest.raises(MaskTextError, match=r"^end of text: text has 2 of 4 rows$"):
        decode("f\nb", 4, 4, "fields3", strict=True)


def test_many_errors_are_all_counted():
    text = "x2f9\n\n!!\n2*e\n*b\nf"
    out, report = decode(text, 5, 3, "fields3")
    np.testing.assert_array_equal(out, grid(["bbf", "eee", "eee", "bbb", "bbb"]))
    assert report.as_dict() == {
        "short_rows": 0,
        "long_rows": 1,
        "unknown_classes": 1,
        "syntax_errors": 3,
        "extra_rows": 1,
        "missing_rows": 0,
    }


def test_huge_numbers_are_repaired():
    text = "9" * 5000 + "*f" + "1" * 5000 + "e\n*b"
    out, report = decode(text, 3, 4, "fields3")
    np.testing.assert_array_equal(out, grid(["ffff"] * 3))
    assert (report.long_rows, report.extra_rows) == (1, 10**9 - 3 + 1)  # count capped, plus "*b"


def test_decode_all_missing_repeats_last_row():
    out, report = decode("e1f", 3, 2, "fields3")
    np.testing.assert_array_equal(out, grid(["ef", "ef", "ef"]))
    assert report.missing_rows == 2


def test_encode_rejects_bad_masks():
    with pytest.raises(SchemaError):
        encode(np.full((2, 2), 3, dtype=np.uint8), "fields3")
    with pytest.raises(SchemaError):
        encode(np.zeros((0, 4), dtype=np.uint8), "fields3")
    with pytest.raises(SchemaError):
        encode(np.zeros(4, dtype=np.uint8), "fields3")


def test_text4seg():
    mask = grid(["ffeb", "bbbb"])
    assert encode_text4seg(mask, "fields3") == (
        "field *2| boundary *1| background *1\nbackground *4"
    )
