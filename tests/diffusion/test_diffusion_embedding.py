"""The attribute-split embedding: one block per attribute, masks zero exactly their blocks, linear projection."""
from __future__ import annotations

import itertools

import pytest
import torch
from diffusion_helpers import ATTRS, random_attrs

from diffusion import AttributeSpec, AttributeSplitEmbedding

NAMES = [a.name for a in ATTRS]


def make_embedding(seed: int = 0) -> AttributeSplitEmbedding:
    torch.manual_seed(seed)
    return AttributeSplitEmbedding(ATTRS, block_dim=5, out_dim=7)


@pytest.mark.parametrize("kept", [set(s) for r in range(4) for s in itertools.combinations(NAMES, r)])
def test_masks_zero_exactly_their_blocks(kept):
    emb = make_embedding()
    attrs = random_attrs(6)
    # row-dependent masks: rows 0..2 use `kept`, rows 3..5 keep everything
    mask = {n: torch.tensor([n in kept] * 3 + [True] * 3) for n in NAMES}
    blocks = emb.blocks(attrs, mask)
    full = emb.blocks(attrs)
    assert blocks.shape == (6, 3, 5)
    for k, name in enumerate(NAMES):
        if name in kept:
            torch.testing.assert_close(blocks[:3, k], full[:3, k], rtol=0, atol=0)
            assert full[:3, k].abs().sum() > 0
        else:
            assert torch.count_nonzero(blocks[:3, k]) == 0
    torch.testing.assert_close(blocks[3:], full[3:], rtol=0, atol=0)


def test_absent_attribute_equals_masked_attribute():
    emb = make_embedding()
    attrs = random_attrs(4)
    masked = emb(attrs, {"intensity": torch.zeros(4, dtype=torch.bool)})
    absent = emb({k: v for k, v in attrs.items() if k != "intensity"})
    torch.testing.assert_close(masked, absent, rtol=0, atol=0)


def test_projection_is_additive_over_blocks_and_null_is_zero():
    """Bias-free linear projection: c(all) = sum_k c(only k), and c(none) = 0 exactly."""
    emb = make_embedding()
    attrs = random_attrs(5)
    none = emb(attrs, {n: torch.zeros(5, dtype=torch.bool) for n in NAMES})
    assert torch.count_nonzero(none) == 0
    singles = sum(emb({n: attrs[n]}) for n in NAMES)
    torch.testing.assert_close(emb(attrs), singles, rtol=1e-5, atol=1e-6)


def test_continuous_attribute_is_standardised():
    torch.manual_seed(0)
    raw = AttributeSplitEmbedding((AttributeSpec("t", "continuous", mean=0.0, std=1.0),), 4, 4)
    std = AttributeSplitEmbedding((AttributeSpec("t", "continuous", mean=10.0, std=2.0),), 4, 4)
    std.load_state_dict(raw.state_dict())
    z = torch.tensor([-1.0, 0.0, 2.5])
    torch.testing.assert_close(std({"t": 10.0 + 2.0 * z}), raw({"t": z}))


def test_batch_size_required_without_attrs():
    emb = make_embedding()
    assert emb({}, batch_size=3).shape == (3, 7)
    with pytest.raises(ValueError, match="batch_size is required"):
        emb({})


@pytest.mark.parametrize("attrs, mask, exc, match", [
    ({"slant": torch.zeros(2)}, None, ValueError, r"unknown attributes \['slant'\] in attrs"),
    ({"thickness": torch.zeros(2, 1)}, None, ValueError, r"'thickness' has shape \(2, 1\); expected \(2,\)"),
    ({"digit": torch.tensor([1.0, 2.0])}, None, TypeError, "'digit' must hold integer class indices"),
    ({"digit": torch.tensor([1, 10])}, None, ValueError, r"class index 10, outside \[0, 9\]"),
    ({"thickness": torch.tensor([1.0, float("nan")])}, None, ValueError, "'thickness' has a non-finite value"),
    ({"thickness": [1.0, 2.0]}, None, TypeError, "'thickness' must be a tensor"),
    ({"digit": torch.tensor([1, 2])}, {"digit": torch.tensor([1, 0])}, TypeError,
     r"keep_mask\['digit'\] must be a bool tensor"),
    ({"digit": torch.tensor([1, 2])}, {"dgit": torch.tensor([True, False])}, ValueError,
     r"unknown attributes \['dgit'\] in keep_mask"),
])
def test_validation_errors(attrs, mask, exc, match):
    with pytest.raises(exc, match=match):
        make_embedding()(attrs, mask, batch_size=2)
