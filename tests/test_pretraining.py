"""The pretraining chapter's library: tokenizer, masking, save/load, determinism, the command line."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbook.data import load_dataset
from recbook.pretraining import (IGNORE_INDEX, SMOKE_CONFIG, SPECIAL_TOKENS, encode_texts, load_text_bert,
                                 mask_tokens, neighbour_precision, pretrain_text_bert, run_text_pretraining,
                                 save_text_bert, train_tokenizer)


@pytest.fixture(scope="module")
def texts():
    return load_dataset("beauty-tiny").items["text"].tolist()


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=1_500)


def test_tokenizer_vocabulary_and_special_tokens(tokenizer, texts):
    assert len(tokenizer) == 1_500
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    ids = tokenizer(texts[0])["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids  # WordPiece splits rare words instead of giving up
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith(texts[0].lower()[:10])


def test_masking_proportions_over_many_draws():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (4_000, 50), generator=generator)
    maskable = torch.rand(ids.shape, generator=generator) < 0.9
    inputs, labels = mask_tokens(ids, maskable, mask_id=4, random_range=(5, 500), generator=generator)
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~maskable).any()
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.002)
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (inputs[chosen] == 4).float().mean()
    unchanged = (inputs[chosen] == ids[chosen]).float().mean()
    assert as_mask == pytest.approx(0.8, abs=0.006) and unchanged == pytest.approx(0.1 + 0.1 / 495, abs=0.006)
    assert torch.equal(inputs[~chosen], ids[~chosen])
    random = chosen & (inputs != 4) & (inputs != ids)
    assert ((inputs[random] >= 5) & (inputs[random] < 500)).all()


def test_masking_is_deterministic_under_a_seed():
    ids = torch.arange(1000).reshape(10, 100) + 5
    a = mask_tokens(ids, ids > 0, 4, (5, 1005), generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, ids > 0, 4, (5, 1005), generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_is_deterministic_and_round_trips(tmp_path, texts, tokenizer):
    config = SMOKE_CONFIG
    model_a, history_a = pretrain_text_bert(texts[:200], tokenizer, config, device="cpu")
    model_b, history_b = pretrain_text_bert(texts[:200], tokenizer, config, device="cpu")
    assert history_a["valid_loss"].tolist() == history_b["valid_loss"].tolist()
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    saved = save_text_bert(model_a, tokenizer, config, history_a, tmp_path / "bert")
    reloaded, reloaded_tokenizer = load_text_bert(saved)
    assert np.array_equal(encode_texts(model_a, tokenizer, texts[:16]), encode_texts(reloaded, reloaded_tokenizer, texts[:16]))
    assert (saved / "history.csv").is_file() and (saved / "pretraining.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["bert"]  # no staging directory left behind


def test_failed_save_leaves_nothing(tmp_path, texts, tokenizer, monkeypatch):
    model, history = pretrain_text_bert(texts[:100], tokenizer, SMOKE_CONFIG, device="cpu")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_text_bert(model, tokenizer, SMOKE_CONFIG, history, tmp_path / "bert")
    assert list(tmp_path.iterdir()) == []


def test_neighbour_precision_by_hand():
    vectors = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.5, 0.5]])
    assert neighbour_precision(vectors, ["a", "a", "b", "b", None], k=1) == 1.0  # unlabelled items are skipped
    assert neighbour_precision(vectors[:4], ["a", "b", "a", "b"], k=1) == 0.0


def test_cli_pretrain_writes_a_loadable_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recbook", "pretrain", "--dataset", "beauty-tiny", "--out",
                             str(tmp_path / "bert"), "--smoke"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "valid_perplexity" in result.stdout
    model, tokenizer = load_text_bert(tmp_path / "bert")
    assert model.config.hidden_size == SMOKE_CONFIG.hidden and len(tokenizer) == SMOKE_CONFIG.vocab_size


def test_pretraining_needs_item_text(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id,position\n1,1,0\n1,2,1\n")
    ds = load_dataset(tmp_path, k=1)
    with pytest.raises(ValueError, match="every item needs a text"):
        run_text_pretraining(ds, tmp_path / "out", SMOKE_CONFIG)


def test_cloze_batch_masks_only_real_items_and_the_last_item_trick():
    from recbook.pretraining import Bert4RecConfig, cloze_batch

    ids = torch.tensor([[0, 0, 3, 4, 5]] * 2000)
    config = Bert4RecConfig(mask_probability=0.2, last_item_share=0.1)
    inputs, labels = cloze_batch(ids, n_items=9, config=config, generator=torch.Generator().manual_seed(0))
    assert (labels[:, :2] == IGNORE_INDEX).all() and (inputs[:, :2] == 0).all()  # padding is never masked
    last_only = (labels[:, :-1] == IGNORE_INDEX).all(1) & (inputs[:, -1] == 10) & (inputs[:, :-1] == ids[:, :-1]).all(1)
    # last-item rows (10%), plus Cloze rows whose only choice was the last item, replaced by [MASK]:
    expected = 0.1 + 0.9 * (0.8 ** 2 * 0.2 * 0.8)
    assert abs(last_only.float().mean() - expected) < 0.025
    assert set(labels[labels != IGNORE_INDEX].tolist()) <= {3, 4, 5}


def test_bert4rec_scores_are_a_chapter5_score_function():
    from recbook.data import leave_one_out
    from recbook.evaluation import evaluate_full
    from recbook.pretraining import Bert4RecConfig, train_bert4rec

    ds = load_dataset("beauty-tiny")
    split = leave_one_out(ds)
    config = Bert4RecConfig(hidden=16, epochs=1, evaluate_every=1)
    model, history, best = train_bert4rec(split, ds.n_items, config, device="cpu")
    scores = model.score(np.arange(3), [split.history("test")[u] for u in range(3)])
    assert scores.shape == (3, ds.n_items + 1) and best == 1 and "valid NDCG@10" in history.columns
    metrics = evaluate_full(model.score, split, "test")
    assert metrics["users"] == ds.n_users and 0 <= metrics["NDCG@10"] <= 1
