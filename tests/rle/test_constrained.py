import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from magseg_ray.masks.schemas import SCHEMAS
from magseg_ray.prompt import PromptConfig, build_patch_prompt
from magseg_ray.rle import ANSWER_FORMATS, codec_for
from magseg_ray.rle.codec import decode, encode
from magseg_ray.rle.constrained import MaskGrammar


def accepts(grammar, text: str) -> bool:
    """Whether ``grammar`` (R-RLE's or another format's) accepts ``text`` as a whole mask."""
    s = grammar.start
    for ch in text:
        s = grammar.step(s, ch)
        if s is None:
            return False
    return grammar.complete(s)


@st.composite
def masks(draw):
    schema = SCHEMAS[draw(st.sampled_from(sorted(SCHEMAS)))]
    h, w = draw(st.integers(1, 33)), draw(st.integers(1, 33))
    n = len(schema.classes)
    # blocky masks (repeated rows, long runs) and noise
    rows = draw(st.lists(st.lists(st.integers(0, n - 1), min_size=w, max_size=w), min_size=1, max_size=4))
    reps = draw(st.lists(st.integers(1, 12), min_size=len(rows), max_size=len(rows)))
    mask = np.repeat(np.array(rows, np.uint8), reps, axis=0)[:h]
    if mask.shape[0] < h:
        mask = np.vstack([mask, np.repeat(mask[-1:], h - mask.shape[0], axis=0)])
    return schema, mask


@settings(max_examples=300, deadline=None)
@given(masks())
def test_grammar_accepts_every_canonical_text(case):
    schema, mask = case
    assert accepts(MaskGrammar(*mask.shape, schema), encode(mask, schema))


@pytest.mark.parametrize(
    "text",
    [
        "f2f",  # two adjacent runs of one class
        "f4",  # a length that leaves no room for the final run
        "4*f",  # explicit count covering all rows left (canonical is "*f")
        "1*f\n*f",  # count 1
        "f\n",  # trailing newline
        "f\nf\nf\nf\nf",  # more rows than the patch
        "x",  # not a code of the schema
        "f01b",  # leading zero
        "*f\n*b",  # a line after the bare star
        "2*f",  # ends before the last row
    ],
)
def test_grammar_rejects(text):
    assert not accepts(MaskGrammar(4, 4, "fields3"), text)


def test_grammar_accepts_noncanonical_row_split():
    # identical rows written separately decode fine; the grammar does not force merging them
    assert accepts(MaskGrammar(4, 4, "fields3"), "f\nf\nf\nf")
    assert accepts(MaskGrammar(4, 4, "fields3"), "f1e2b\n*b")


def sample(tiny, patch, n, max_new_tokens, temperature=1.5):
    from magseg_ray.rle.constrained import RLELogitsProcessor

    model, processor = tiny
    chip = np.random.default_rng(patch).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = PromptConfig(patch_size=patch)
    prompts = [build_patch_prompt(chip, (0, 0, patch, patch), cfg) for _ in range(n)]
    enc = processor(text=[p.text for p in prompts], images=[p.images for p in prompts],
                    return_tensors="pt", add_special_tokens=False, padding=True)
    prompt_len = enc["input_ids"].shape[1]
    proc = RLELogitsProcessor(processor.tokenizer, patch, patch, "fields3", prompt_len,
                              model.generation_config.eos_token_id, max_new_tokens)
    out = model.generate(**enc, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                         logits_processor=LogitsProcessorList([proc]))
    return [processor.tokenizer.decode(row, skip_special_tokens=True) for row in out[:, prompt_len:]], out[:, prompt_len:]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from magseg_ray.model.checkpoint import load_model

    return load_model(tiny_dir)


@pytest.mark.parametrize("patch, budget", [(8, 200), (32, 400), (32, 12)])
def test_random_weights_model_only_writes_valid_masks(tiny, patch, budget):
    texts, tokens = sample(tiny, patch, 8, budget)
    eos = set(tiny[0].generation_config.eos_token_id)
    for text, row in zip(texts, tokens):
        mask, report = decode(text, patch, patch, "fields3", strict=True)
        assert report.ok and mask.shape == (patch, patch)
        assert any(int(t) in eos for t in row)  # the answer ended, within the budget


def test_kind_first_choice_follows_the_total_probability_of_each_kind(tiny):
    from magseg_ray.rle.constrained import RLELogitsProcessor

    tokenizer = tiny[1].tokenizer
    eos = tokenizer.eos_token_id
    proc = RLELogitsProcessor(tokenizer, 32, 32, "fields3", 0, [eos])
    ids = tokenizer.convert_tokens_to_ids
    # after "*f" the answer may end, or a run length 1..31 may follow (then another code)
    prompt = torch.tensor([[ids("*"), ids("f")]])
    numbers = [ids(str(n)) for n in range(1, 32)]
    scores = torch.full((1, len(tokenizer)), -5.0)
    scores[0, eos] = 0.0  # the single most probable token: the end (p ~ 0.2)
    scores[0, numbers] = -1.0  # each length far less likely, together ~0.8
    scores[0, ids("14")] = -0.5  # the most probable length
    constrained = proc(prompt, scores)
    assert int(constrained.argmax()) == eos  # plain greedy ends the answer: "*f"
    assert int(proc.by_kind(constrained).argmax()) == ids("14")  # kind-first writes a length
    scores[0, numbers] = -4.0  # now the lengths together are less likely than the end
    assert int(proc.by_kind(proc(prompt, scores)).argmax()) == eos


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
@settings(max_examples=150, deadline=None)
@given(case=masks())
def test_decoder_may_write_every_canonical_text(tiny, answer_format, case):
    # every token of a canonical answer is allowed where it stands, the end wherever the text so
    # far is a whole mask; a mask complete after "*f" may still go on ("*f14b4f")
    schema, mask = case
    tokenizer = tiny[1].tokenizer
    fmt = codec_for(answer_format)
    proc = fmt.logits_processor(tokenizer, *mask.shape, schema, 0, [tokenizer.eos_token_id])
    text = fmt.encode(mask, schema)
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for n, token in enumerate(tokens):
        state = proc.state_of(0, tokens[:n])
        allowed = proc.allowed(state, None).tolist()
        assert token in allowed, (text, tokenizer.convert_ids_to_tokens(tokens[:n + 1]))
        assert (tokenizer.eos_token_id in allowed) == proc.grammar.complete(state)


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
def test_boundary_bias_starts_a_boundary_run_the_model_finds_less_likely(tiny, answer_format):
    tokenizer = tiny[1].tokenizer
    ids = tokenizer.convert_tokens_to_ids
    proc = codec_for(answer_format).logits_processor(tokenizer, 32, 32, "fields3", 0, [tokenizer.eos_token_id])
    scores = torch.full((1, len(tokenizer)), -9.0)
    scores[0, ids("f")], scores[0, ids("e")] = 0.0, -2.0  # the first run: field (p ~ 0.88), boundary (p ~ 0.12)
    prefix = [] if answer_format == "rrle" else [ids("0"), ids(":")]  # anchored lines open with their row
    constrained = proc(torch.tensor([prefix], dtype=torch.long), scores)
    assert int(proc.by_kind(constrained).argmax()) == ids("f")
    assert int(proc.by_kind(constrained, boundary_bias=5.0).argmax()) == ids("f")  # 0.6 < 0.88
    assert int(proc.by_kind(constrained, boundary_bias=10.0).argmax()) == ids("e")  # 1.2 > 0.88


@pytest.mark.parametrize("answer_format", ANSWER_FORMATS)
def test_the_token_trie_allows_exactly_the_tokens_that_spell_a_valid_continuation(tiny, answer_format):
    """Every state along sampled answers, with and without a tight budget: the trie walk (shared
    cache) against trying every candidate token character by character."""
    tokenizer = tiny[1].tokenizer
    fmt = codec_for(answer_format)
    proc = fmt.logits_processor(tokenizer, 16, 16, "fields3", 0, [tokenizer.eos_token_id], 40)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(30):
        state, budget = proc.grammar.start, 40
        while state.phase != "done" and budget > 0:
            for b in (None, budget):
                brute = [i for i, piece in proc.candidates if (nxt := proc.advance(state, piece)) is not None
                         and (b is None or 2 + proc.grammar.tokens_to_finish(nxt) <= b)]
                brute += proc.eos.tolist() if proc.grammar.complete(state) else []
                if brute or b is None:
                    assert proc._allowed_ids(state, b).tolist() == sorted(brute)
                    checked += 1
            allowed = proc.allowed(state, budget).tolist()
            token = int(rng.choice(allowed))
            state = proc.grammar.done if token == tokenizer.eos_token_id else proc.advance(state, proc.pieces[token])
            budget -= 1
    assert checked > 200


def test_the_shared_cache_of_allowed_tokens_starts_over_past_its_limit(tiny, monkeypatch):
    from magseg_ray.rle import constrained

    monkeypatch.setattr(constrained, "_ALLOWED_LIMIT", 5)
    monkeypatch.setattr(constrained, "_ALLOWED", {})  # not what earlier tests left
    tokenizer = tiny[1].tokenizer
    proc = codec_for("rrle").logits_processor(tokenizer, 8, 8, "fields3", 0, [tokenizer.eos_token_id])
    fresh = codec_for("rrle").logits_processor(tokenizer, 8, 8, "fields3", 0, [tokenizer.eos_token_id])
    assert fresh._known is proc._known  # one cache for the same grammar and vocabulary
    state, seen = proc.grammar.start, []
    for ch in "3*f4b2f\n":
        seen.append(state)
        assert proc.allowed(state, None).tolist() == proc._allowed_ids(state, None).tolist()
        assert len(proc._known) <= 5
        state = proc.grammar.step(state, ch)
    assert len(seen) > 5
