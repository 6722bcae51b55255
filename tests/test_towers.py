"""Chapter 3: item and user towers, the two losses, and saving a model."""
import math

import numpy as np
import pytest
import torch

from recbook.evaluation import EvaluationError, load_recommender
from recbook.towers import (SASRecRecommender, TowerConfig, TwoTower, TwoTowerRecommender,
                            causal_padding_mask, full_softmax_loss, mixed_negatives, sampled_softmax_loss)

N_ITEMS = 30


def small_network(text: bool = True, seed: int = 0, **settings) -> TwoTower:
    torch.manual_seed(seed)
    config = TowerConfig(hidden=16, layers=2, heads=2, max_length=8, dropout=0.0,
                         text_encoder="minilm" if text else None, **settings)
    vectors = np.random.default_rng(seed).normal(size=(N_ITEMS + 1, 12)).astype(np.float32) if text else None
    if vectors is not None: vectors[0] = 0
    return TwoTower(N_ITEMS, config, vectors).eval()


def test_item_tower_shapes_and_padding():
    network = small_network()
    ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    vectors = network.items(ids)
    assert vectors.shape == (2, 4, 16)
    assert torch.all(vectors[0, :2] == 0), "padding must map to the zero vector"
    assert network.items.catalogue().shape == (N_ITEMS + 1, 16)
    hidden = network.items(ids, drop_ids=torch.ones_like(ids, dtype=torch.bool))
    text_only = network.items.text_only(network.items.text_vectors[ids])
    assert torch.allclose(hidden[1], text_only[1], atol=1e-6), "dropped IDs leave the text part alone"


def test_user_tower_is_causal_and_padding_invariant():
    network = small_network()
    ids = torch.tensor([[0, 0, 5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, -1] = 9
    a, b = network.encode(ids), network.encode(changed)
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6), "a later item must not change earlier positions"
    assert not torch.allclose(a[0, -1], b[0, -1])
    wider = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]])
    assert torch.allclose(network.encode(wider)[0, -1], a[0, -1], atol=1e-5), "extra padding must not matter"
    assert not torch.isnan(network.encode(torch.zeros(2, 4, dtype=torch.long))).any()


def test_newest_is_forwards_last_position_without_the_padding_work():
    network = small_network()
    rng = np.random.default_rng(1)
    lengths = [1, 8, 3, 5, 2]  # one history as long as max_length, the others padded
    ids = torch.zeros(len(lengths), 8, dtype=torch.long)
    for row, n in enumerate(lengths): ids[row, -n:] = torch.as_tensor(rng.integers(1, N_ITEMS + 1, n))
    with torch.no_grad():
        vectors = network.items(ids)
        expected = network.user(vectors, ids == 0)[:, -1]
        assert torch.allclose(network.user.newest(vectors, ids == 0), expected, atol=1e-5)
        assert torch.allclose(network.user.newest(vectors[2:3, -3:], ids[2:3, -3:] == 0), expected[2:3], atol=1e-5)
        with pytest.raises(EvaluationError, match="newest item in the last column"):
            network.user.newest(vectors, torch.ones_like(ids, dtype=torch.bool))  # an empty history
        network.user.train()
        with pytest.raises(EvaluationError, match="inference"):
            network.user.newest(vectors, ids == 0)


def test_causal_padding_mask():
    mask = causal_padding_mask(torch.tensor([[True, False, False]]), heads=2)
    assert mask.shape == (2, 3, 3)
    allowed = mask[0] == 0
    assert allowed.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_full_softmax_loss_hand_case():
    logits = torch.tensor([[1.0, 2.0, 3.0]])  # items 1..3: the padding id 0 is not a column
    expected = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    assert full_softmax_loss(logits, torch.tensor([3])).item() == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_equals_full_softmax_over_the_whole_catalogue():
    torch.manual_seed(0)
    users, items = torch.randn(5, 8), torch.randn(N_ITEMS + 1, 8)
    targets = torch.tensor([1, 7, 7, 30, 12])
    full = full_softmax_loss(users @ items[1:].T, targets)
    # every item a candidate: the accidental hit (the target itself) is removed, what is left is the full softmax
    sampled = sampled_softmax_loss(users, items, targets, torch.arange(1, N_ITEMS + 1), log_q=None)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)
    kept = sampled_softmax_loss(users, items, targets, torch.arange(1, N_ITEMS + 1), None, remove_accidental_hits=False)
    assert kept.item() > sampled.item(), "without removal the target also counts as its own negative"


def test_mixed_negatives_log_q():
    probability = torch.tensor([0.0, 0.5, 0.25, 0.25])
    negatives, log_q = mixed_negatives(torch.tensor([1, 1, 2]), 6, probability, torch.Generator().manual_seed(0))
    assert len(negatives) == 9 and negatives[:3].tolist() == [1, 1, 2]
    assert torch.allclose(log_q[1:].exp(), 3 * probability[1:] + 6 / 3)


def test_log_q_correction_moves_scores_the_right_way():
    """Learn one free score per item from a skewed item distribution with sampled softmax whose negatives are drawn
    by popularity. Full softmax would learn log p (up to a constant). Without log-Q the popular items, sampled as
    negatives far more often, are pushed down; the correction removes that bias."""
    generator = torch.Generator().manual_seed(0)
    n = 20
    p = torch.tensor([0.0] + list(np.geomspace(1, 0.01, n)), dtype=torch.float32)
    p = p / p.sum()
    log_p = torch.log(p[1:])

    def learn(correct: bool) -> torch.Tensor:
        scores = torch.zeros(n + 1, 1, requires_grad=True)
        optimiser = torch.optim.Adam([scores], lr=0.05)
        user = torch.ones(1, 1)
        for _ in range(600):
            targets = torch.multinomial(p, 64, replacement=True, generator=generator)
            negatives, log_q = mixed_negatives(targets, 0, p, generator)
            loss = sampled_softmax_loss(user.expand(64, 1), scores, targets, negatives, log_q if correct else None)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        learned = scores.detach()[1:, 0]
        return learned - learned.mean()

    truth = log_p - log_p.mean()
    with_correction, without = learn(True), learn(False)
    error_with = (with_correction - truth).abs().mean()
    error_without = (without - truth).abs().mean()
    assert error_with < 0.5 * error_without, (error_with, error_without)
    # the bias without correction: the popular half is scored too low relative to the rare half
    gap = lambda s: s[: n // 2].mean() - s[n // 2:].mean()
    assert gap(without) < gap(truth) - 0.5 and abs(gap(with_correction) - gap(truth)) < 0.5


def test_config_checks():
    with pytest.raises(EvaluationError, match="multiple of heads"):
        TowerConfig(hidden=10, heads=3)
    with pytest.raises(EvaluationError, match="IDs, text, or both"):
        TowerConfig(use_ids=False, text_encoder=None)
    with pytest.raises(EvaluationError, match="similarity"):
        TowerConfig(similarity="l2")


def test_save_load_round_trip(tmp_path):
    network = small_network()
    model = TwoTowerRecommender(network, dataset="beauty-tiny", text_encoder="minilm")
    histories = [np.array([1, 2, 3]), np.array([4]), np.arange(1, 20)]
    before = model(None, histories)
    assert before.shape == (3, N_ITEMS + 1)
    model.save(tmp_path / "m")
    loaded = load_recommender(tmp_path / "m")
    assert isinstance(loaded, TwoTowerRecommender) and loaded.dataset == "beauty-tiny" and loaded.has_text
    assert torch.equal(loaded(None, histories).cpu(), before.cpu())
    assert loaded.user_vectors(histories).shape == (3, 16) and loaded.item_vectors().shape == (N_ITEMS + 1, 16)
    assert not any(p.name.startswith(".") for p in (tmp_path / "m").iterdir()), "no temporary files left behind"


def test_sasrec_has_no_text_tower(tmp_path):
    model = SASRecRecommender(small_network(text=False), dataset="beauty-tiny")
    model.save(tmp_path / "s")
    loaded = load_recommender(tmp_path / "s")
    assert loaded.kind == "sasrec" and not loaded.has_text
    with pytest.raises(NotImplementedError):
        loaded.query_vectors(["lipstick"])
