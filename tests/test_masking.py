import jax
import numpy as np
import pytest

from wavjepa_jax import configuration, masking

L = 200


def release_masker_numpy(rng, cfg, num_frames=L):
    """Independent numpy port of the release's AudioSet masker (wav2vec 2.0 span sampling)."""
    def spans(prob, length):
        count = int(prob * num_frames / length + rng.random())
        starts = rng.choice(num_frames - length, count, replace=False)
        mask = np.zeros(num_frames, bool)
        for s in starts:
            mask[s:s + length] = True
        return mask

    while True:
        context = ~spans(cfg.context_mask_prob, cfg.context_span)
        targets = np.stack([spans(cfg.target_prob, cfg.target_span)
                            for _ in range(cfg.num_target_groups)])
        context &= ~targets.any(0)
        if context.sum() / num_frames >= cfg.min_context_ratio:
            return context, targets


@pytest.fixture(scope="module")
def reference_sizes():
    cfg = configuration.mask_config()
    rng = np.random.default_rng(0)
    draws = [release_masker_numpy(rng, cfg) for _ in range(2000)]
    return (np.mean([c.sum() for c, _ in draws]), np.mean([t.sum(1).mean() for _, t in draws]))


def draw(mode, n=2000, key=0, **overrides):
    cfg = configuration.mask_config()
    cfg.mode = mode
    cfg.update(overrides)
    sample = jax.jit(lambda k: masking.sample_masks(k, n, L, cfg))
    return jax.tree.map(np.asarray, sample(jax.random.PRNGKey(key)))


@pytest.fixture(scope="module")
def release_masks():
    return draw("release")


@pytest.fixture(scope="module")
def fixed_masks():
    return draw("fixed")


def test_reference_masker_matches_the_documented_sizes(reference_sizes):
    context, target = reference_sizes
    assert 34 <= context <= 40 and 43 <= target <= 47


def test_release_mode_reproduces_the_release_distribution(release_masks, reference_sizes):
    context = release_masks.context_valid.sum(1)
    target = release_masks.target_valid.sum(2)
    assert context.mean() == pytest.approx(reference_sizes[0], rel=0.03)
    assert target.mean() == pytest.approx(reference_sizes[1], rel=0.03)
    assert context.min() >= 20 and target.max() <= 50


def test_fixed_mode_sizes_are_within_ten_percent_of_the_release(fixed_masks, reference_sizes):
    assert fixed_masks.context_valid.all() and fixed_masks.target_valid.all()
    assert fixed_masks.context_idx.shape == (2000, 36)
    assert fixed_masks.target_idx.shape == (2000, 4, 45)
    assert 36 == pytest.approx(reference_sizes[0], rel=0.10)
    assert 45 == pytest.approx(reference_sizes[1], rel=0.10)


@pytest.mark.parametrize("mode", ["release", "fixed"])
def test_no_target_frame_is_in_the_context(mode, release_masks, fixed_masks):
    masks = release_masks if mode == "release" else fixed_masks
    for b in range(0, 2000, 7):
        context = set(masks.context_idx[b][masks.context_valid[b]])
        targets = set(masks.target_idx[b][masks.target_valid[b]].ravel())
        assert context and targets and not context & targets
        assert len(context) == masks.context_valid[b].sum()   # No duplicates.


@pytest.mark.parametrize("mode", ["release", "fixed"])
def test_indices_are_sorted_and_in_range(mode, release_masks, fixed_masks):
    masks = release_masks if mode == "release" else fixed_masks
    idx = np.where(masks.context_valid, masks.context_idx, L)
    assert (np.diff(idx, axis=1) >= 0).all() and masks.context_idx.max() < L
    assert masks.target_idx.min() >= 0 and masks.target_idx.max() < L


def test_fixed_mode_keeps_span_structure(fixed_masks):
    # Targets are built from length-10 spans: most frames have a target neighbour.
    runs = []
    for group in fixed_masks.target_idx[:200].reshape(-1, 45):
        runs.append(1 + np.sum(np.diff(group) > 1))
    assert np.mean(runs) < 7   # ~5 spans of ~10 frames, not 45 scattered frames.


def test_examples_differ_and_same_key_repeats(release_masks):
    assert len({tuple(row) for row in release_masks.context_idx[:100]}) == 100
    again = draw("release", n=2000, key=0)
    np.testing.assert_array_equal(again.context_idx, release_masks.context_idx)
    other = draw("release", n=2000, key=1)
    assert not np.array_equal(other.context_idx, release_masks.context_idx)


def test_release_mode_redraws_small_contexts():
    masks = draw("release", n=200, min_context_ratio=0.25)
    assert masks.context_valid.sum(1).min() >= 50


@pytest.mark.parametrize("field,value,message", [
    ("target_span", 250, "mask.target_span"),
    ("context_span", 200, "mask.context_span"),
    ("context_size", 190, "mask.context_size"),
    ("target_size", 200, "mask.target_size"),
    ("num_target_groups", 0, "mask.num_target_groups"),
    ("mode", "bogus", "mask.mode"),
    ("target_prob", 1.5, "mask.target_prob"),
])
def test_impossible_mask_configs_name_the_field(field, value, message):
    cfg = configuration.mask_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        masking.validate_mask_config(cfg, L)


def test_release_mode_context_capacity_must_fit_the_sequence():
    cfg = configuration.mask_config()
    cfg.mode, cfg.context_capacity = "release", 201
    with pytest.raises(ValueError, match=r"mask\.context_capacity"):
        masking.validate_mask_config(cfg, L)


def test_an_exhausted_redraw_never_leaks_targets_into_the_context():
    # Passes validation, but 4 groups of 90 frames rarely leave 100 frames for the context.
    masks = draw("fixed", n=16, target_size=90, context_size=100)
    assert (~masks.accepted).sum() > 0
    for b in range(16):
        context = set(masks.context_idx[b][masks.context_valid[b]])
        assert not context & set(masks.target_idx[b].ravel())
    assert (masks.context_valid.sum(1)[~masks.accepted] < 100).all()


def test_fixed_mode_follows_the_release_masking_rate_at_every_frame(release_masks, fixed_masks):
    def context_rate(masks):
        rate = np.zeros(L)
        for idx, valid in zip(masks.context_idx, masks.context_valid):
            rate[idx[valid]] += 1
        return rate / len(masks.context_idx)
    release, fixed = context_rate(release_masks), context_rate(fixed_masks)
    # Same shape across the sequence, the edges included (fixed has 36 vs ~39 frames on average).
    assert np.abs(fixed - release * 36 / release.sum()).max() < 0.12
