"""The evaluation chapter's library: reference values, rank properties, baselines, model directories, bad input."""
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recbook.data import leave_one_out, load_dataset, temporal_split
from recbook.evaluation import (EvaluationError, ItemKNN, MostPopular, accuracy_metrics, auc, average_popularity,
                                catalog_coverage, category_similarity, cooccurrence_similarity, distributional_coverage,
                                evaluate_full, evaluate_recommender, evaluate_sampled, fit_baseline, gauc, gini_index,
                                history_cells, history_mask, intra_list_diversity, item_coverage, load_recommender, long_tail_share,
                                novelty, sample_negatives, save_recommender, serendipity, shannon_entropy,
                                target_ranks, top_k_lists)


@pytest.fixture(scope="module")
def tiny():
    ds = load_dataset("beauty-tiny")
    return ds, leave_one_out(ds)


# --- reference values (shared/reference/beyond-accuracy-vectors.md), tolerance 1e-4 ---------------------------------

MS_TRAIN = [np.array([1, 2, 4]), np.array([3, 4]), np.array([3, 4, 5])]
MS_LISTS = np.array([[3, 5], [2, 5], [1, 2]])
MS_RELEVANCE = np.array([[1, 0], [1, 1], [1, 0]])
RECBOLE_LISTS = np.array([[5, 7, 3], [4, 5, 2], [2, 3, 5], [1, 4, 6], [5, 3, 7]])


def test_microsoft_recommenders_reference_values():
    counts = np.bincount(np.concatenate(MS_TRAIN), minlength=6)
    sim = cooccurrence_similarity(MS_TRAIN, 6)
    assert catalog_coverage(MS_LISTS, MS_TRAIN) == pytest.approx(0.8, abs=1e-4)
    assert distributional_coverage(MS_LISTS) == pytest.approx(1.9183, abs=1e-4)
    per_item = -np.log2(counts[1:] / 8)
    assert per_item == pytest.approx([3, 3, 2, 1.41504, 3], abs=1e-4)
    assert novelty(MS_LISTS, counts, n_train=8) == pytest.approx(2.83333, abs=1e-4)
    per_user_div = [intra_list_diversity(MS_LISTS[[u]], sim) for u in range(3)]
    assert per_user_div == pytest.approx([0.29289, 1, 0], abs=1e-4)
    assert intra_list_diversity(MS_LISTS, sim) == pytest.approx(0.43096, abs=1e-4)
    per_user_ser = [serendipity(MS_LISTS[[u]], MS_RELEVANCE[[u]], [MS_TRAIN[u]], sim) for u in range(3)]
    assert per_user_ser == pytest.approx([0.363915, 0.53455, 0.403775], abs=1e-4)
    assert serendipity(MS_LISTS, MS_RELEVANCE, MS_TRAIN, sim) == pytest.approx(0.43408, abs=1e-4)


def test_recbole_reference_values():
    assert item_coverage(RECBOLE_LISTS, 8) == pytest.approx(7 / 8, abs=1e-4)
    assert gini_index(RECBOLE_LISTS, 8) == pytest.approx(41 / 120, abs=1e-4)
    assert shannon_entropy(RECBOLE_LISTS) == pytest.approx(0.2631, abs=1e-4)


def test_feature_based_diversity_and_serendipity_by_hand():
    from recbook.evaluation import embedding_similarity

    vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)  # items 1..3
    sim = embedding_similarity(vectors)
    lists = np.array([[1, 2], [1, 3]])
    # pair (1,2): cosine 0 -> 1; pair (1,3): cosine 1/sqrt2 -> 1 - 0.7071
    assert intra_list_diversity(lists, sim) == pytest.approx((1 + 1 - 1 / math.sqrt(2)) / 2, abs=1e-9)
    # user trained on item 3; listed 1 (cos 1/sqrt2, relevant) and 2 (cos 1/sqrt2, not relevant)
    value = serendipity(np.array([[1, 2]]), np.array([[1, 0]]), [np.array([3])], sim)
    assert value == pytest.approx((1 - 1 / math.sqrt(2)) / 2, abs=1e-9)


def test_category_similarity_treats_missing_categories_as_dissimilar():
    cats = pd.Series(["A|x", "B|x", None, "C|y"], index=[1, 2, 3, 4])
    sim = category_similarity(cats)
    assert sim(np.array([1, 1, 3, 1]), np.array([2, 4, 3, 1])).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_popularity_metrics():
    counts = np.array([0, 10, 5, 1, 1, 1])  # item 1 is the 20% head of five items
    assert average_popularity(np.array([[1, 2], [3, 4]]), counts) == pytest.approx((7.5 + 1) / 2)
    assert long_tail_share(np.array([[1, 2], [3, 4]]), counts) == pytest.approx(0.75)


# --- ranks --------------------------------------------------------------------------------------------------------

def test_rank_does_not_depend_on_where_the_target_sits():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (50, 30), generator=generator).float()  # many ties on purpose
    targets = torch.randint(0, 30, (50,), generator=generator)
    exclude = torch.rand(50, 30, generator=generator) < 0.2
    for ties in ("pessimistic", "optimistic", "expected"):
        base = target_ranks(scores, targets, exclude, ties)
        for _ in range(5):
            perm = torch.randperm(30, generator=generator)
            inverse = torch.argsort(perm)
            moved = target_ranks(scores[:, perm], inverse[targets], exclude[:, perm], ties)
            assert torch.equal(base, moved)


def test_ranks_match_a_brute_force_count():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (20, 12), generator=generator).float()
    targets = torch.randint(0, 12, (20,), generator=generator)
    exclude = torch.rand(20, 12, generator=generator) < 0.3
    ranks = target_ranks(scores, targets, exclude).tolist()
    for r, s, t, e in zip(ranks, scores.tolist(), targets.tolist(), exclude.tolist()):
        rivals = [x for j, x in enumerate(s) if j != t and not e[j]]
        assert r == sum(x >= s[t] for x in rivals)
    for ties in ("pessimistic", "optimistic", "expected"):  # the sparse form of the same exclusions ranks the same
        assert torch.equal(target_ranks(scores, targets, exclude.nonzero(as_tuple=True), ties),
                           target_ranks(scores, targets, exclude, ties))


def test_history_cells_are_the_history_mask_each_cell_once():
    histories = [np.array([3, 3, 1]), np.array([], dtype=np.int64), np.array([5])]  # a repeat purchase, an empty one
    rows, cols = history_cells(histories, 6)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (0, 1), (0, 3), (1, 0), (2, 0), (2, 5)]
    by_hand = torch.zeros(3, 6, dtype=torch.bool)  # padding column 0 always, then each user's items
    by_hand[0, [0, 1, 3]] = by_hand[1, 0] = by_hand[2, [0, 5]] = True
    assert torch.equal(history_mask(histories, 6), by_hand)


def test_constant_scores_get_no_credit():
    ranks = target_ranks(torch.zeros(3, 100), torch.tensor([1, 50, 99]))
    assert ranks.tolist() == [99.0] * 3
    assert accuracy_metrics(ranks.numpy(), np.arange(3), 3, ks=(10,))["HR@10"] == 0


def test_accuracy_metrics_by_hand():
    m = accuracy_metrics([0, 3, 12], [0, 1, 2], 3, ks=(1, 10))
    assert m["HR@1"] == pytest.approx(1 / 3) and m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["MRR@10"] == pytest.approx((1 + 0.25) / 3)


def test_full_evaluation_equals_sorting_the_whole_catalogue(tiny):
    ds, split = tiny
    model = fit_baseline("itemknn", split, "test", ds.n_items)
    metrics, ranks = evaluate_full(model, split, "test", ks=(10,), return_ranks=True, batch_size=97)
    histories = split.history("test")
    for u in range(0, ds.n_users, 37):
        scores = model([u], [histories[u]])[0].numpy().astype(np.float64)
        scores[0] = -np.inf
        scores[histories[u]] = -np.inf
        target = split.test[u][0]
        rivals = np.delete(scores, target)
        assert ranks[u] == (rivals >= scores[target]).sum()
    assert metrics["users"] == ds.n_users and metrics["HR@10"] == metrics["Recall@10"]


def test_several_targets_per_user_with_a_temporal_split(tiny):
    ds, _ = tiny
    split = temporal_split(ds, 0.1, 0.1)
    model = fit_baseline("pop", split, "test", ds.n_items)
    metrics = evaluate_full(model, split, "test", ks=(10,))
    assert metrics["users"] == len(split.users("test")) < ds.n_users
    assert metrics["Recall@10"] <= metrics["HR@10"]
    assert max(len(t) for t in split.test) > 1


def test_exclude_history_is_configurable(tiny):
    ds, split = tiny
    model = fit_baseline("pop", split, "test", ds.n_items)
    kept = evaluate_full(model, split, "test", exclude_history=False)
    removed = evaluate_full(model, split, "test")
    assert removed["HR@10"] >= kept["HR@10"]


def test_top_k_lists_exclude_history_and_padding(tiny):
    ds, split = tiny
    lists = top_k_lists(fit_baseline("itemknn", split, "test", ds.n_items), split, "test", 10)
    assert lists.shape == (ds.n_users, 10) and (lists > 0).all()
    for u in range(0, ds.n_users, 25):
        assert not np.isin(lists[u], split.history("test")[u]).any()
        assert len(np.unique(lists[u])) == 10


def test_sampled_negatives_are_deterministic_and_unseen(tiny):
    ds, split = tiny
    a = sample_negatives(split, "test", ds.n_items, 100, seed=3)
    b = sample_negatives(split, "test", ds.n_items, 100, seed=3)
    c = sample_negatives(split, "test", ds.n_items, 100, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for u in range(0, ds.n_users, 20):
        assert len(np.unique(a[u])) == 100
        assert not np.isin(a[u], np.concatenate([split.history("test")[u], split.test[u]])).any()


def test_sampled_protocol_is_labelled_and_inflates(tiny):
    ds, split = tiny
    model = fit_baseline("itemknn", split, "test", ds.n_items)
    sampled = evaluate_sampled(model, split, "test", ds.n_items, seed=0)
    assert "not comparable" in sampled["protocol"]
    assert sampled["NDCG@10"] > evaluate_full(model, split, "test")["NDCG@10"]


def test_click_metrics_by_hand():
    assert auc([1, 0, 0, 1], [0.9, 0.1, 0.5, 0.4]) == pytest.approx(3 / 4)
    assert gauc(["a", "a", "b", "b", "b"], [1, 0, 1, 0, 0], [0.2, 0.1, 0.1, 0.5, 0.0]) == pytest.approx(
        (1.0 * 2 + 0.5 * 3) / 5)


# --- baselines, model directories, CLI ------------------------------------------------------------------------------

def test_saved_models_score_like_the_originals(tiny, tmp_path):
    ds, split = tiny
    for kind in ("pop", "itemknn"):
        model = fit_baseline(kind, split, "test", ds.n_items)
        loaded = load_recommender(save_recommender(model, tmp_path / kind, ds.name, "test"))
        assert type(loaded) is type(model) and loaded.n_items == ds.n_items
        rows = np.arange(5)
        histories = [split.history("test")[u] for u in rows]
        assert torch.equal(loaded(rows, histories), model(rows, histories))


def recbook(*args):
    return subprocess.run([sys.executable, "-m", "recbook", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("kind, hr, ndcg", [("pop", 0.013460, 0.006075), ("itemknn", 0.074587, 0.045880)])
def test_cli_evaluates_the_baselines_on_beauty(kind, hr, ndcg):
    "The chapter's test-split numbers, from the command line (tolerance 1e-4)."
    result = recbook("evaluate", "--model", kind, "--dataset", "beauty", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["users"] == 22_363 and report["HR@10"] == pytest.approx(hr, abs=1e-4)
    assert report["NDCG@10"] == pytest.approx(ndcg, abs=1e-4)
    for name in ("MRR@10", "Recall@10", "CTR@10 (replay)", "sampled100 NDCG@10", "click AUC", "click GAUC",
                 "click log-loss", "catalog coverage@10", "Gini@10", "novelty@10 (bits)", "ILD@10 co-occurrence",
                 "ILD@10 category", "serendipity@10", "ARP@10", "long-tail share@10"):
        assert isinstance(report[name], float) and not math.isnan(report[name]), name


def test_cli_reads_a_model_directory(tmp_path):
    ds = load_dataset("beauty-tiny")
    split = leave_one_out(ds)
    save_recommender(fit_baseline("pop", split, "test", ds.n_items), tmp_path / "pop", ds.name, "test")
    from_dir = json.loads(recbook("evaluate", "--model", tmp_path / "pop", "--dataset", "beauty-tiny", "--json").stdout)
    by_name = json.loads(recbook("evaluate", "--model", "pop", "--dataset", "beauty-tiny", "--json").stdout)
    assert {k: v for k, v in from_dir.items() if k != "model"} == {k: v for k, v in by_name.items() if k != "model"}


# --- bad input ---------------------------------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors(tiny):
    ds, split = tiny
    with pytest.raises(EvaluationError, match="NaN in rows \\[1\\]"):
        target_ranks(torch.tensor([[0.0, 1.0], [float("nan"), 1.0]]), [0, 1])
    with pytest.raises(EvaluationError, match="matrix"):
        target_ranks(torch.zeros(5), [0])
    with pytest.raises(EvaluationError, match="one entry per score row"):
        target_ranks(torch.zeros(2, 3), [0])
    with pytest.raises(EvaluationError, match="target ids must lie in 0..2"):
        target_ranks(torch.zeros(1, 3), [7])
    with pytest.raises(EvaluationError, match="history item ids must lie in 1..4"):
        history_mask([np.array([1, 9])], 5)
    with pytest.raises(EvaluationError, match="K must be positive"):
        accuracy_metrics([0], [0], 1, ks=(0,))
    with pytest.raises(EvaluationError, match="K must be in 1..560"):
        evaluate_recommender(MostPopular().fit(split.train, ds.n_items), ds, split, k=561)
    with pytest.raises(EvaluationError, match="larger than the"):
        top_k_lists(MostPopular().fit(split.train, ds.n_items), split, "test", k=559)
    with pytest.raises(EvaluationError, match="non-empty"):
        catalog_coverage(np.empty((0, 10), dtype=int), split.train)
    with pytest.raises(EvaluationError, match="score_fn must return"):
        evaluate_full(lambda rows, h: torch.zeros(len(rows), 3), split)
    with pytest.raises(EvaluationError, match="score_fn must return"):
        evaluate_full(lambda rows, h: torch.zeros(len(rows) + 1, ds.n_items + 1), split)
    with pytest.raises(EvaluationError, match="NaN"):
        evaluate_full(lambda rows, h: torch.full((len(rows), ds.n_items + 1), float("nan")), split)
    with pytest.raises(EvaluationError, match="recency_decay"):
        ItemKNN(recency_decay=0)


def test_cli_bad_input(tmp_path):
    result = recbook("evaluate", "--model", "pop", "--dataset", "beauty-tiny", "--k", "0")
    assert result.returncode == 2 and "K must be in 1..560" in result.stderr
    result = recbook("evaluate", "--model", tmp_path, "--dataset", "beauty-tiny")
    assert result.returncode == 2 and "not a model directory" in result.stderr
    (tmp_path / "recommender.json").write_text('{"kind": "gpt"}')
    result = recbook("evaluate", "--model", tmp_path, "--dataset", "beauty-tiny")
    assert result.returncode == 2 and "unknown model kind 'gpt'" in result.stderr


def test_a_sequential_model_evaluates_users_with_an_empty_history(tiny):
    "A time cut-off leaves some test users with no history before it: they get no personal signal, not an error."
    from recbook.towers import TowerConfig, TwoTower, TwoTowerRecommender

    ds, _ = tiny
    split = temporal_split(ds, 0.1, 0.1)
    empty = [u for u in split.users("test") if len(split.history("test")[u]) == 0]
    assert empty, "the fixture should give a test user with an empty history"
    torch.manual_seed(0)
    model = TwoTowerRecommender(TwoTower(ds.n_items, TowerConfig(hidden=16, layers=1, max_length=20)).eval())
    metrics, ranks = evaluate_full(model, split, "test", ks=(10,), return_ranks=True)
    assert metrics["users"] == len(split.users("test"))
    scores = model(np.array(empty[:1]), [split.history("test")[empty[0]]])
    assert torch.equal(scores, torch.zeros_like(scores))  # every item ties: the pessimistic rule counts a miss
