import numpy as np
import torch

from magseg_ray.geoseg.clip_surgery import (
    ClipSurgery,
    feature_surgery,
    image_tokens,
    similarity_map,
    vv_attention,
)


def test_original_path_equals_clip_vision_model_exactly(geoseg_presets):
    s = ClipSurgery.load(geoseg_presets["clip"])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, original = image_tokens(s.clip, pixels, blocks=2)
    with torch.no_grad():
        reference = s.clip.vision_model(pixel_values=pixels).last_hidden_state
    assert torch.equal(original, reference)


def test_surgery_keeps_cls_from_the_original_path_and_changes_the_rest(geoseg_presets):
    s = ClipSurgery.load(geoseg_presets["clip"])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens, original = image_tokens(s.clip, pixels, blocks=2)
    vt = s.clip.vision_model
    with torch.no_grad():
        cls = s.clip.visual_projection(vt.post_layernorm(original[:, 0]))
    assert torch.allclose(tokens[:, 0], cls, atol=1e-6)
    plain = s.clip.visual_projection(vt.post_layernorm(original))
    assert not torch.allclose(tokens[:, 1:], plain[:, 1:])
    none, _ = image_tokens(s.clip, pixels, blocks=0)  # no surgery block: the plain projected tokens
    assert torch.allclose(none, plain, atol=1e-6)


def test_vv_attention_by_hand():
    class Attn(torch.nn.Module):
        num_heads, head_dim, scale = 1, 2, 1.0

        def __init__(self):
            super().__init__()
            self.v_proj, self.out_proj = torch.nn.Identity(), torch.nn.Identity()

    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # v v^T = I -> softmax rows [e/(e+1), 1/(e+1)] and mirrored
    a, b = np.e / (np.e + 1), 1 / (np.e + 1)
    expected = torch.tensor([[[a, b], [b, a]]], dtype=torch.float32)
    assert torch.allclose(vv_attention(Attn(), v), expected)


def test_feature_surgery_by_hand():
    image = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: [0.6, 0.8], [0, 1]
    text, empty = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])
    assert torch.allclose(feature_surgery(image, text, empty), torch.tensor([0.8, 1.0]))


def test_similarity_map_drops_cls_and_min_max_normalises():
    sim = torch.tensor([100.0, 1.0, 3.0, 2.0, 5.0])  # CLS, then a 2 x 2 grid
    m = similarity_map(sim, (2, 2), (2, 2))
    assert np.allclose(m, [[0.0, 0.5], [0.25, 1.0]])
    up = similarity_map(sim, (2, 2), (4, 6))
    assert up.shape == (4, 6) and up.min() >= 0 and up.max() <= 1
    assert np.array_equal(similarity_map(torch.ones(5), (2, 2), (2, 2)), np.zeros((2, 2)))


def test_similarity_of_a_crop_covers_it(geoseg_presets):
    s = ClipSurgery.load(geoseg_presets["clip"])
    crop = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    m = s.similarity(crop, "field")
    assert m.shape == (37, 53) and np.isclose(m.min(), 0, atol=0.05) and np.isclose(m.max(), 1, atol=0.05)
