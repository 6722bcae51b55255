"""The data chapter's library on the real benchmark, the three input formats, and bad input."""
import gzip
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbook.data import (DatasetError, atomic_write, beauty_dir, dataset_stats, leave_one_out, load_dataset,
                          read_raw, temporal_split, write_dataset)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared data folder {SHARED} is not beside the repo")


@pytest.fixture(scope="module")
def beauty():
    return load_dataset("beauty")


# --- the benchmark ---------------------------------------------------------------------------------------------

def test_beauty_matches_the_published_benchmark(beauty):
    assert (beauty.n_users, beauty.n_items, beauty.n_interactions) == (22_363, 12_101, 198_502)
    assert leave_one_out(beauty).n_interactions("train") == 153_776
    assert beauty.report["k_core_interactions_dropped"] == 0 and beauty.report["exact_duplicates_dropped"] == 0


def test_beauty_statistics_match_the_shipped_stats_file(beauty):
    expected = json.loads((beauty_dir() / "stats.json").read_text())
    stats = dataset_stats(beauty)
    for key in ("users", "items", "interactions", "avg_len", "median_len", "min_len", "max_len", "avg_per_item",
                "min_item_count", "sparsity_pct", "loo_train_interactions", "timestamp_min", "timestamp_max"):
        assert stats[key] == expected[key], key


def test_item_ids_keep_padding_free_and_texts_exist(beauty):
    all_items = np.concatenate(beauty.sequences)
    assert all_items.min() == 1 and all_items.max() == beauty.n_items
    assert list(beauty.items.index[:3]) == [1, 2, 3]
    assert beauty.items["text"].str.len().min() > 0
    no_title = beauty.items["title"].isna()
    assert no_title.sum() == 7  # these fall back to brand + leaf category
    assert all(t.endswith(".") and "Category:" in t for t in beauty.items.loc[no_title, "text"])


def test_order_follows_position_not_timestamp(beauty):
    raw = pd.read_csv(beauty_dir() / "interactions.csv.gz")
    first_user = raw[raw.user_id == raw.user_id.min()].sort_values("position")
    assert beauty.sequences[0].tolist() == first_user.item_id.tolist()
    for ts in beauty.timestamps[:1000]:
        assert np.all(np.diff(ts) >= 0)  # within a user, time never goes backwards


def test_leave_one_out_structure(beauty):
    split = leave_one_out(beauty)
    for u in (0, 1, 500, beauty.n_users - 1):
        seq = beauty.sequences[u]
        assert split.test[u].tolist() == [seq[-1]] and split.valid[u].tolist() == [seq[-2]]
        assert np.array_equal(split.history("test")[u], seq[:-1])
        assert np.array_equal(split.history("valid")[u], seq[:-2])
    assert len(split.users("test")) == beauty.n_users


def test_temporal_split_never_trains_on_the_future(beauty):
    split = temporal_split(beauty, 0.1, 0.1)
    total = sum(split.n_interactions(p) for p in ("train", "valid", "test"))
    assert total == beauty.n_interactions
    assert 0.05 < split.n_interactions("test") / total < 0.15
    train_max = max(ts[: len(t)].max() for ts, t in zip(beauty.timestamps, split.train) if len(t))
    test_min = min(ts[len(ts) - len(t):].min() for ts, t in zip(beauty.timestamps, split.test) if len(t))
    assert train_max < test_min


def test_beauty_tiny_is_small_deterministic_and_k_cored():
    a, b = load_dataset("beauty-tiny"), load_dataset("beauty-tiny")
    assert (a.n_users, a.n_items, a.n_interactions) == (455, 560, 5_970)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert min(map(len, a.sequences)) >= 5 and a.item_counts()[1:].min() >= 5
    assert a.items["text"].notna().all()


# --- formats -----------------------------------------------------------------------------------------------------

@needs_shared
def test_sequence_file_gives_the_same_sequences(beauty):
    seq = load_dataset(SHARED / "raw" / "s3rec_Beauty.txt.gz")
    assert seq.report["format"] == "sequence-file" and seq.timestamps is None
    assert (seq.n_users, seq.n_items, seq.n_interactions) == (22_363, 12_101, 198_502)
    assert all(np.array_equal(x, y) for x, y in zip(seq.sequences, beauty.sequences))


@needs_shared
def test_recbole_atomic_files(tmp_path, beauty):
    frame = pd.read_csv(beauty_dir() / "interactions.csv.gz")
    inter = frame.rename(columns={"reviewer_id": "user_id:token", "asin": "item_id:token",
                                  "timestamp": "timestamp:float"})[["user_id:token", "item_id:token", "timestamp:float"]]
    inter.to_csv(tmp_path / "beauty.inter", sep="\t", index=False)
    with gzip.open(SHARED / "raw" / "recbole_Amazon_Beauty_5core.item.gz", "rb") as src:
        (tmp_path / "beauty.item").write_bytes(src.read())
    ds = load_dataset(tmp_path)
    assert ds.report["format"] == "recbole" and ds.report["order_by"] == "timestamp"
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22_363, 12_101, 198_502)
    assert ds.items["categories"].str.startswith("Beauty|").all()
    # RecBole has no position, so same-day ties may reorder a user's items, but the item sets are the same.
    assert sorted(map(len, ds.sequences)) == sorted(map(len, beauty.sequences))


def test_write_and_read_back(tmp_path):
    tiny = load_dataset("beauty-tiny")
    written = write_dataset(tiny, tmp_path / "out")
    assert sorted(p.name for p in written) == ["interactions.csv.gz", "items.csv.gz", "stats.json"]
    again = load_dataset(tmp_path / "out")
    assert all(np.array_equal(x, y) for x, y in zip(again.sequences, tiny.sequences))
    assert again.items["text"].tolist() == tiny.items["text"].tolist()


def test_timestamps_only_and_date_strings(tmp_path):
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"{u},{i},2020-01-{i + 1:02d}\n" for u in (1, 2) for i in (3, 1, 2)))
    ds = load_dataset(tmp_path, k=1)
    assert ds.report["order_by"] == "timestamp"
    assert ds.sequences[0].tolist() == [1, 2, 3]  # sorted by date, not file order
    assert ds.items["text"].isna().all()  # no items file: no text, which is allowed


# --- bad input -----------------------------------------------------------------------------------------------------

def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


GOOD_ITEMS = "item_id,title\n10,ten\n11,eleven\n"


@pytest.mark.parametrize("interactions, items, file, row, field, words", [
    ("user_id,position\n1,0\n", None, "interactions.csv", None, "item_id", "missing column"),
    ("user_id,item_id\n1,10\n", None, "interactions.csv", None, "position", "order column"),
    ("user_id,item_id,position\n1,10,0\n1,x1,1\n", None, "interactions.csv", 2, "item_id", "integer"),
    ("user_id,item_id,position\n1,10,0\nu2,11,0\n", None, "interactions.csv", 2, "user_id", "integer"),
    ("user_id,item_id,position\n1,10,0\n1,11,zz\n", None, "interactions.csv", 2, "position", "integer"),
    ("user_id,item_id,timestamp\n1,10,yesterday-ish\n", None, "interactions.csv", 1, "timestamp", "date"),
    ("", None, "interactions.csv", None, None, "empty"),
    ("user_id,item_id,position\n", None, "interactions.csv", None, None, "no rows"),
    ("user_id,item_id,position\n1,10,0\n1,12,1\n", GOOD_ITEMS, "interactions.csv", 2, "item_id", "items.csv"),
    ("user_id,item_id,position\n1,10,0\n", "item_id,title,brand\n10,ten,OPI\n11,,Unknown\n", "items.csv", 2, "title",
     "no text"),
    ("user_id,item_id,position\n1,10,0\n", "item_id,price\n10,3\n", "items.csv", None, "title", "text column"),
    ("user_id,item_id,position\n1,10,0\n", "item_id,title\n10,a\n10,b\n", "items.csv", 2, "item_id", "once"),
    ("user_id,item_id,position\n1,10,0\n", "item_id,title,price\n10,a,cheap\n", "items.csv", 1, "price", "number"),
])
def test_bad_csv_input_names_file_row_and_field(tmp_path, interactions, items, file, row, field, words):
    write(tmp_path, "interactions.csv", interactions)
    if items is not None: write(tmp_path, "items.csv", items)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path, k=1)
    error, message = caught.value, str(caught.value)
    assert file in message and words in message
    assert error.row == row and error.field == field
    if row is not None: assert f"row {row}" in message and f"line {row + 1}" in message
    if field is not None: assert f"field '{field}'" in message


@pytest.mark.parametrize("text, line, field", [
    ("1 10 11\n2 11 x3\n", 2, "item_id (token 3)"),
    ("1 10 11\n\n7\n", 3, "item_id"),
    ("1 10 11\nuser9 10\n", 2, "user_id"),
])
def test_malformed_sequence_file_names_the_line(tmp_path, text, line, field):
    write(tmp_path, "data.txt", text)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path / "data.txt", k=1)
    assert caught.value.line == line and caught.value.field == field
    assert "data.txt" in str(caught.value) and f"line {line}" in str(caught.value)


def test_recbole_bad_header_and_values(tmp_path):
    write(tmp_path, "x.inter", "user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DatasetError, match=r"x\.inter, line 1, field 'item_id': header field"):
        load_dataset(tmp_path, k=1)
    write(tmp_path, "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tlate\n")
    with pytest.raises(DatasetError, match=r"row 2, line 3, field 'timestamp:float'"):
        load_dataset(tmp_path, k=1)


def test_paths_that_are_not_datasets(tmp_path):
    with pytest.raises(DatasetError, match="no such file or directory"):
        load_dataset(tmp_path / "missing")
    write(tmp_path, "notes.md", "hello")
    with pytest.raises(DatasetError, match="no dataset found.*notes.md"):
        load_dataset(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "interactions.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"interactions\.csv\.gz: cannot be parsed"):
        load_dataset(tmp_path / "broken")


def test_k_core_that_leaves_nothing_is_an_error(tmp_path):
    write(tmp_path, "interactions.csv", "user_id,item_id,position\n1,10,0\n1,11,1\n")
    with pytest.raises(DatasetError, match="no interactions survive 5-core"):
        load_dataset(tmp_path, k=5)


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    write(tmp_path, "interactions.csv", "user_id,item_id,position\n1,10,0\n1,10,0\n1,11,1\n")
    ds = load_dataset(tmp_path, k=1)
    assert ds.report["exact_duplicates_dropped"] == 1 and ds.n_interactions == 2


# --- nothing half-written ------------------------------------------------------------------------------------------

def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    tiny = load_dataset("beauty-tiny")
    out = tmp_path / "out"

    def broken_to_csv(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tiny, out)
    assert list(out.iterdir()) == []  # no partial file and no temporary file



def test_a_write_that_fails_on_its_second_file_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    "Every file is complete before any is renamed: no new interactions beside old items."
    tiny = load_dataset("beauty-tiny")
    out = tmp_path / "out"
    write_dataset(tiny, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write, calls = gzip.GzipFile.write, []

    def fails_second(self, data):
        calls.append(1)
        if len(calls) == 2: raise OSError("disk full")
        return real_write(self, data)

    monkeypatch.setattr(gzip.GzipFile, "write", fails_second)
    shorter = replace(tiny, sequences=tiny.sequences[:-10], user_ids=tiny.user_ids[:-10],
                      timestamps=tiny.timestamps[:-10] if tiny.timestamps is not None else None)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(shorter, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "old files intact, no temporary file left"

def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "stats.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("new, but incomplete")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_read_raw_reports_what_it_read():
    raw = read_raw(beauty_dir())
    assert raw.format == "recbook-csv" and raw.interactions_path.endswith("interactions.csv.gz")
    assert raw.items is not None and len(raw.items) == 12_101


@pytest.mark.parametrize("content, file, field, line", [
    ("user_id,item_id,position\n1,10,0\n123456789012345678901,10,1\n", "interactions.csv", "user_id", 3),
    ("user_id,item_id,position\n1,10.0,0\n1,12345678901234567,1\n", "interactions.csv", "item_id", 3),  # via a float
    ("1 10 11\n2 10 ²\n", "shop.txt", "item_id (token 3)", 2),
    ("1 10 11\n2 10 " + "9" * 30 + "\n", "shop.txt", "item_id (token 3)", 2),
])
def test_ids_that_would_change_or_break_in_conversion_are_refused(tmp_path, content, file, field, line):
    "Found by the fuzzing tests: a 17-digit id read through a float became another id; '²' and 30 digits crashed."
    (tmp_path / file).write_text(content)
    with pytest.raises(DatasetError) as raised:
        load_dataset(tmp_path, k=1)
    assert (raised.value.field, raised.value.line) == (field, line) and file in str(raised.value)
