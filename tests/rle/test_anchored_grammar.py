import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magseg_ray.rle import ANSWER_FORMATS, codec_for
from magseg_ray.rle.anchored import decode, encode
from magseg_ray.rle.anchored_grammar import AnchoredGrammar, AnchoredLogitsProcessor
from tests.rle.test_constrained import accepts, masks


@settings(max_examples=300, deadline=None)
@given(masks())
def test_grammar_accepts_every_canonical_text(case):
    schema, mask = case
    assert accepts(AnchoredGrammar(*mask.shape, schema), encode(mask, schema))


@pytest.mark.parametrize(
    "text",
    [
        "1:f",  # the first line must start at row 0
        "0:f2f",  # two adjacent runs of one class
        "0:f4",  # an end that leaves no room for the final run
        "0:f2e2b",  # ends not strictly increasing
        "0:f3e2b",  # an end before the previous one
        "0:f\n0:b",  # rows not strictly increasing
        "0:f\n2:e\n1:b",  # rows going back
        "0:f\n4:b",  # a row beyond the patch
        "0:f\n01:b",  # leading zero in a row
        "0:f01b",  # leading zero in an end
        "00:f",  # leading zero in the first row
        "0:f0b",  # an end of zero
        "0:f\n",  # trailing newline
        "0:",  # no runs
        "0:f2",  # digits of an end, then nothing
        "f",  # no row index
        "0f",  # no ':'
        "0:x",  # not a code of the schema
        "0:*f",  # an R-RLE symbol
    ],
)
def test_grammar_rejects(text):
    assert not accepts(AnchoredGrammar(4, 4, "fields3"), text)


def test_grammar_accepts_two_digit_numbers_and_unmerged_rows():
    assert accepts(AnchoredGrammar(32, 32, "fields3"), "0:f20e22b\n12:b")
    assert accepts(AnchoredGrammar(32, 32, "fields3"), "0:b31f\n31:f")
    assert not accepts(AnchoredGrammar(32, 32, "fields3"), "0:f32b")  # an end must leave room
    assert not accepts(AnchoredGrammar(32, 32, "fields3"), "0:f\n32:b")
    assert accepts(AnchoredGrammar(4, 4, "fields3"), "0:f\n1:f\n2:f\n3:f")  # merging is not forced


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from magseg_ray.model.checkpoint import load_model

    return load_model(tiny_dir)[1].tokenizer


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 33), st.integers(1, 33), st.sampled_from(["fields3", "alu"]), st.integers(8, 80),
       st.randoms(use_true_random=False))
def test_random_walks_through_the_grammar_decode_strictly(tokenizer, h, w, schema, budget, rnd):
    # any token the processor allows, within any budget of 8 or more, ends in a whole mask in time
    eos = tokenizer.eos_token_id
    proc = AnchoredLogitsProcessor(tokenizer, h, w, schema, 0, [eos], budget)
    answer: list[int] = []
    while not answer or answer[-1] != eos:
        assert len(answer) < budget
        allowed = proc.allowed(proc.state_of(0, answer), budget - len(answer)).tolist()
        answer.append(rnd.choice(allowed))
    text = tokenizer.decode(answer, skip_special_tokens=True)
    mask, report = decode(text, h, w, schema, strict=True)
    assert report.ok and mask.shape == (h, w)


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
def test_every_format_round_trips_through_codec_for(answer_format):
    fmt = codec_for(answer_format)
    mask = np.zeros((32, 32), np.uint8)
    mask[3:20, 5:9] = 1
    text = fmt.encode(mask, "fields3")
    assert np.array_equal(fmt.decode(text, 32, 32, "fields3", strict=True)[0], mask)
    checker = np.indices((32, 32)).sum(0).astype(np.uint8) % 2
    assert len(fmt.encode(checker, "fields3")) <= fmt.longest_text(32, 32)


def test_unknown_format_is_refused():
    from magseg_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="answer format"):
        codec_for("text4seg")
