"""Chapter 6: the item index, the feedback log, and the real HTTP server (a `recbook serve` child process) end to end."""
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from recbook.data import leave_one_out, load_dataset
from recbook.evaluation import EvaluationError, load_recommender
from recbook.privacy import pseudonym_key, pseudonyms
from recbook.loadtest import load_test, plot_latency_histogram
from recbook.serving import (EXPLANATIONS, MAX_BODY_BYTES, MAX_K, MAX_QUERY_CHARS, BackgroundServer, FeedbackStore, ItemIndex,
                             MicroBatcher, RecommendationService, RecQuery, ServingError, call, compare_indexes,
                             fastest_at_recall, feedback_sequences, make_app, recall_at_k, synthetic_catalogue,
                             top_items, free_port, ServeConfig)


def recbook(*args):
    return subprocess.run([sys.executable, "-m", "recbook", *map(str, args)], capture_output=True, text=True, timeout=300)


def train(kind: str, out):
    "One epoch of the smoke configuration: the model only has to be servable, not good."
    result = recbook("train", "--model", kind, "--dataset", "beauty-tiny", "--out", out, "--smoke", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module", autouse=True)
def offline():
    "MiniLM comes from its pip package: nothing here may reach the Hugging Face Hub (child processes inherit this)."
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny():
    ds = load_dataset("beauty-tiny")
    return ds, leave_one_out(ds)


@pytest.fixture(scope="module")
def histories(tiny):
    "Test-split histories of three items or more, in user order."
    _, split = tiny
    return [h for h in (split.history("test")[u] for u in split.users("test")) if len(h) >= 3]


@pytest.fixture(scope="module")
def twotower_dir(tmp_path_factory):
    return train("twotower", tmp_path_factory.mktemp("twotower") / "model")


@pytest.fixture(scope="module")
def sasrec_dir(tmp_path_factory):
    return train("sasrec", tmp_path_factory.mktemp("sasrec") / "model")


def serve(model_dir, work):
    return BackgroundServer(model_dir, feedback=work / "feedback.sqlite", exit_after=600, log=work / "server.log")


@pytest.fixture(scope="module")
def server(twotower_dir, tmp_path_factory):
    "The two-tower model (it has a text tower, so /search works) behind `recbook serve`."
    with serve(twotower_dir, tmp_path_factory.mktemp("twotower-server")) as running:
        yield running


@pytest.fixture(scope="module")
def sasrec_server(sasrec_dir, tmp_path_factory):
    with serve(sasrec_dir, tmp_path_factory.mktemp("sasrec-server")) as running:
        yield running


def assert_ranked(answer: dict, k: int) -> list[int]:
    "`k` items, best first, each with a title; returns their ids."
    items = answer["items"]
    assert len(items) == k
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(item["title"], str) and item["title"] for item in items)
    return [item["id"] for item in items]


# --- the item index, without a server ------------------------------------------------------------------------------

def random_catalogue(n_items=2000, dim=16, n_queries=50, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_items + 1, dim)).astype(np.float32)
    vectors[0] = 0  # padding
    return vectors, rng.standard_normal((n_queries, dim)).astype(np.float32)


def brute_force_top(vectors, queries, k):
    return np.argsort(-(queries @ vectors[1:].T), axis=1, kind="stable")[:, :k] + 1


def test_exact_index_agrees_with_brute_force():
    vectors, queries = random_catalogue()
    scores, ids = ItemIndex(vectors, "exact").search(queries, 10)
    assert ids.shape == (len(queries), 10)
    assert np.array_equal(ids, brute_force_top(vectors, queries, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, ids, 1), atol=1e-4)
    with pytest.raises(ServingError, match="index kind"):
        ItemIndex(vectors, "annoy")


def test_ivf_recall_with_many_cells_probed():
    vectors, queries = random_catalogue(n_items=5000)
    truth = ItemIndex(vectors, "exact").search(queries, 10)[1]
    ivf = ItemIndex(vectors, "ivf", nprobe=64)
    assert recall_at_k(ivf.search(queries, 10)[1], truth) >= 0.9
    assert recall_at_k(ivf.set_search(nprobe=10_000).search(queries, 10)[1], truth) == 1.0  # every cell = exact


def test_top_items_leaves_out_each_rows_exclusions():
    vectors, queries = random_catalogue()
    best = brute_force_top(vectors, queries[:2], 7)
    index = ItemIndex(vectors)
    (kept, scores), (unfiltered, _) = top_items(index, queries[:2], 5, [best[0, :2], None])
    assert kept.tolist() == best[0, 2:7].tolist(), "k items remain after the two excluded ones"
    assert (np.diff(scores) <= 0).all()
    assert unfiltered.tolist() == best[1, :5].tolist()


def test_recall_at_k_by_hand():
    found = [[1, 2, 3], [4, 5, 6]]
    truth = [[3, 2, 9], [7, 8, 6]]
    assert recall_at_k(found, truth) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(truth, truth) == 1.0


def test_compare_indexes_and_fastest_at_recall():
    vectors, queries = random_catalogue(n_items=1000, n_queries=20)
    table = compare_indexes(vectors, queries, k=10, kinds=("exact", "ivf"), sweeps={"ivf": ("nprobe", (1, 1000))},
                            latency_queries=5)
    assert table["index"].tolist() == ["exact", "ivf", "ivf"] and table.loc[0, "recall@10"] == 1.0
    assert table["recall@10"].iloc[-1] == 1.0 and (table["p50 ms"] <= table["p99 ms"]).all()
    best = fastest_at_recall(table, 0.95, 10)
    assert set(best["index"]) == {"exact", "ivf"} and (best["recall@10"] >= 0.95).all()


def test_synthetic_catalogue_has_the_models_dimension_padding_and_a_seed():
    vectors, _ = random_catalogue(n_items=100)
    catalogue = synthetic_catalogue(vectors, 3000, seed=1)
    assert catalogue.shape == (3001, 16) and (catalogue[0] == 0).all()
    assert np.array_equal(catalogue, synthetic_catalogue(vectors, 3000, seed=1))


# --- the feedback log, without a server ----------------------------------------------------------------------------

def test_feedback_store_commits_each_event_and_a_failed_one_leaves_no_trace(tmp_path, monkeypatch):
    path = tmp_path / "logs" / "feedback.sqlite"
    store = FeedbackStore(path)
    name = dict(zip("abcz", pseudonyms("abcz", pseudonym_key())))  # the store keeps pseudonyms, never the ids sent
    assert store.append({"user": "a", "item": 3, "history": [1, 2]}) == 1
    assert FeedbackStore.read(path)[0] == {**FeedbackStore.read(path)[0], "id": 1, "user": name["a"], "item": 3,
                                          "history": [1, 2]}, "readable by another connection once append returns"
    import sqlite3
    with sqlite3.connect(path) as db:  # a write that fails inside its transaction, as a full disk would make it
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.user = '{name['z']}' "
                   "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END")
    with pytest.raises(sqlite3.DatabaseError, match="simulated"):
        store.append({"user": "z", "item": 4})
    assert store.append({"user": "b", "item": 5}) == 2, "the failed event was rolled back whole"
    store.close()
    reopened = FeedbackStore(path)
    assert reopened.count == 2 and reopened.append({"user": "c", "item": 6}) == 3
    reopened.close()
    assert [e["user"] for e in FeedbackStore.read(path)] == [name["a"], name["b"], name["c"]]
    monkeypatch.delenv("RECBOOK_PSEUDONYM_KEY")
    with pytest.raises(EvaluationError, match="no pseudonym key"):  # no key, no store: nothing is created
        FeedbackStore(tmp_path / "other" / "feedback.sqlite")
    assert not (tmp_path / "other").exists()


def test_an_old_json_lines_log_is_imported_once_and_its_torn_line_skipped(tmp_path):
    old = tmp_path / "feedback.jsonl"
    old.write_text('{"user": "a", "item": 3, "history": [1, 2]}\n{"user": "a", "item": 4}\n{"user": "b", "it')
    first, second = FeedbackStore.at(old), FeedbackStore.at(old)  # e.g. two server processes starting together
    assert first.path == second.path == tmp_path / "feedback.sqlite" and first.count == second.count == 2
    assert FeedbackStore.at(tmp_path / "feedback.sqlite").count == 2, "the .sqlite path finds the same log beside it"
    assert [s.tolist() for s in feedback_sequences(FeedbackStore.read(first.path))] == [[1, 2, 3, 4]]
    first.append({"user": "a", "item": 5})  # a server started with --feedback feedback.jsonl stores here
    first.close()
    second.close()
    assert [e["item"] for e in FeedbackStore.read(old)] == [3, 4, 5], \
        "`recbook finetune --feedback feedback.jsonl` reads the store it became, not the old log alone"
    (tmp_path / "bad.jsonl").write_text('{"user": "a", "item": 3}\n[1, 2]\n')
    with pytest.raises(ServingError, match=r"bad.jsonl, line 2: not a feedback event"):
        FeedbackStore.at(tmp_path / "bad.jsonl")
    (tmp_path / "not-a-store.sqlite").write_text("hello")
    with pytest.raises(ServingError, match="not-a-store.sqlite: not a feedback store"):
        FeedbackStore.read(tmp_path / "not-a-store.sqlite")


def test_processes_writing_one_store_get_unique_event_numbers(tmp_path):
    path = tmp_path / "feedback.sqlite"
    writer = ("import sys; from recbook.serving import FeedbackStore; s = FeedbackStore(sys.argv[1]); "
              "print(*[s.append({'user': sys.argv[2], 'item': i}) for i in range(1, 101)])")
    runs = [subprocess.Popen([sys.executable, "-c", writer, str(path), name], stdout=subprocess.PIPE, text=True)
            for name in ("p", "q", "r")]
    numbers = [int(n) for run in runs for n in run.communicate(timeout=300)[0].split()]
    assert all(run.returncode == 0 for run in runs)
    assert sorted(numbers) == list(range(1, 301)), "every event numbered once, no number twice"
    events = FeedbackStore.read(path)
    assert [e["id"] for e in events] == list(range(1, 301))
    assert {e["user"] for e in events} == set(pseudonyms("pqr", pseudonym_key())), "each writer's user, as its pseudonym"


# --- the service in-process: what depends on a batch or on the catalogue's ids -------------------------------------

@pytest.fixture(scope="module")
def sasrec_model(sasrec_dir):
    return load_recommender(sasrec_dir)


def test_each_request_in_a_batch_gets_its_own_k(sasrec_model, tiny, histories):
    service = RecommendationService(sasrec_model, tiny[0])
    small, large = service.recommend_batch([RecQuery(histories[0], k=3), RecQuery(histories[1], k=20)])
    assert (len(small["items"]), len(large["items"])) == (3, 20)


def test_an_all_digit_asin_is_found_by_its_asin(sasrec_model, tiny):
    ds, _ = tiny
    items = ds.items.copy()
    items.loc[items.index[4], "asin"] = "7806397051"  # a real Beauty ASIN (ISBN-style, all digits)
    service = RecommendationService(sasrec_model, dataclasses.replace(ds, items=items))
    assert service.catalogue.resolve(["7806397051"]).tolist() == [5], "POST bodies resolve it (a JSON string)"
    assert service.item("7806397051")["id"] == 5


def test_an_item_reference_that_only_looks_numeric_is_an_unknown_item(sasrec_model, tiny):
    service = RecommendationService(sasrec_model, tiny[0])
    for ref in ("²", "٣", "9" * 5000, "9" * 19):  # isdigit() is true for all; int() refuses the first three
        with pytest.raises(ServingError, match="unknown item") as raised:
            service.item(ref)
        assert raised.value.status == 404 and len(str(raised.value)) < 300, "named, not printed in full"


def test_cancelling_a_request_leaves_the_rest_of_its_batch_answered():
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    def slow_double(requests):
        release.wait(10)
        return [r * 2 for r in requests]

    async def scenario():
        batcher = MicroBatcher(slow_double, max_batch=8, executor=ThreadPoolExecutor(1))
        tasks = [asyncio.create_task(batcher.submit(n)) for n in range(4)]
        await asyncio.sleep(0.1)  # the batch of four is running now
        tasks[0].cancel()  # its client went away
        release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 10)
        later = await asyncio.wait_for(batcher.submit(10), 10)
        return done, later, tasks[0].cancelled()

    assert asyncio.run(scenario()) == ([2, 4, 6], 20, True)


def test_a_stopped_batcher_fails_its_waiting_requests_instead_of_stranding_them():
    import asyncio

    async def scenario():
        batcher = MicroBatcher(lambda requests: [r for r in requests], max_batch=1)
        waiting = [asyncio.create_task(batcher.submit(n)) for n in range(3)]
        await asyncio.sleep(0)  # submitted; the drain task starts on the next turn
        batcher._task.cancel()  # what the event loop does to it at shutdown
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ServingError) and o.status == 503 for o in outcomes), outcomes


def test_a_slow_search_does_not_hold_up_recommendations(sasrec_model, tiny):
    "The text encoder runs off the event loop: /recommend is answered while a search is still being computed."
    import asyncio
    import threading

    import httpx

    service = RecommendationService(sasrec_model, tiny[0])
    searching, release = threading.Event(), threading.Event()

    def slow_search(queries):
        searching.set()
        release.wait(30)
        return [{"query": q, "items": []} for q, _ in queries]

    service.search_batch = slow_search
    app = make_app(service)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            search = asyncio.create_task(client.post("/search", json={"query": "shampoo"}))
            while not searching.is_set(): await asyncio.sleep(0.01)
            recommended = await asyncio.wait_for(client.post("/recommend", json={"history": [1, 2]}), 20)
            still_searching = not search.done()
            release.set()
            return recommended.status_code, still_searching, (await search).status_code

    assert asyncio.run(scenario()) == (200, True, 200)


# --- the real server over HTTP -------------------------------------------------------------------------------------

def test_health_openapi_and_docs(server, tiny):
    status, health = call(server.url, "/healthz")
    assert status == 200 and health["status"] == "ok" and health["items"] == tiny[0].n_items
    assert health["model"] == "twotower" and health["text_search"] is True
    status, spec = call(server.url, "/openapi.json")
    assert status == 200 and {"/recommend", "/search", "/items/{item}", "/feedback", "/healthz"} <= set(spec["paths"])
    with urllib.request.urlopen(server.url + "/docs", timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        assert b"<html" in response.read().lower()


def test_items_by_id_and_by_asin(server, tiny):
    ds, _ = tiny
    asin = ds.items.asin[7]
    status, by_id = call(server.url, "/items/7")
    assert status == 200 and by_id["id"] == 7 and by_id["asin"] == asin and by_id["title"]
    assert by_id["interactions"] == ds.item_counts()[7]
    assert call(server.url, f"/items/{asin}") == (200, by_id)
    for unknown in ("B000NOTREAL", str(ds.n_items + 1), "0"):
        status, answer = call(server.url, f"/items/{unknown}")
        assert status == 404 and unknown in answer["error"] and answer["field"] == "item"
    for looks_numeric in ("%C2%B2", "9" * 4301):  # '²' (isdigit() is true), and more digits than int() converts
        status, answer = call(server.url, f"/items/{looks_numeric}")
        assert (status, answer["field"]) == (404, "item") and "unknown item" in answer["error"], answer


def test_recommend_by_ids_and_by_asins(server, tiny, histories):
    ds, _ = tiny
    history = histories[0]
    status, by_ids = call(server.url, "/recommend", {"history": history.tolist(), "k": 5})
    assert status == 200 and by_ids["cold_start"] is False
    ids = assert_ranked(by_ids, 5)
    assert not set(ids) & set(history.tolist()), "history items are left out by default"
    status, by_asins = call(server.url, "/recommend", {"history": [ds.items.asin[i] for i in history], "k": 5})
    assert status == 200 and by_asins == by_ids


@pytest.mark.parametrize("explain", ["similarity", "occlusion"])
def test_each_recommendation_names_the_history_items_behind_it(server, histories, explain):
    history = histories[1]
    status, answer = call(server.url, "/recommend", {"history": history.tolist(), "k": 4, "explain": explain})
    assert status == 200 and answer["explanation"] == EXPLANATIONS[explain]
    assert_ranked(answer, 4)
    for item in answer["items"]:
        assert 1 <= len(item["because"]) <= 3
        assert {"id", "asin", "title", "contribution"} <= set(item["because"][0])
        assert {b["id"] for b in item["because"]} <= set(history.tolist())
        contributions = [b["contribution"] for b in item["because"]]
        assert contributions == sorted(contributions, reverse=True)
    status, plain = call(server.url, "/recommend", {"history": history.tolist(), "k": 4, "explain": "none"})
    assert status == 200 and not any("because" in item for item in plain["items"])


def test_exclude_seen_false_lets_history_items_back_in(server, histories):
    "With k = MAX_K some history item is among the best for one of the first users; with exclude_seen it never is."
    for history in histories[:30]:
        seen = set(history.tolist())
        status, allowed = call(server.url, "/recommend", {"history": history.tolist(), "k": MAX_K, "exclude_seen": False})
        assert status == 200
        if seen & set(assert_ranked(allowed, MAX_K)): break
    else:
        pytest.fail("no history item was recommended back with exclude_seen=false")
    status, excluded = call(server.url, "/recommend", {"history": history.tolist(), "k": MAX_K})
    assert status == 200 and not seen & set(assert_ranked(excluded, MAX_K))
    unseen = [i for i in (item["id"] for item in allowed["items"]) if i not in seen]
    assert [item["id"] for item in excluded["items"]][:len(unseen)] == unseen, "same ranking, history removed"


def test_an_empty_history_gets_the_popular_items(server, tiny):
    counts = tiny[0].item_counts()
    status, answer = call(server.url, "/recommend", {"history": [], "k": 6})
    assert status == 200 and answer["cold_start"] is True and "new user" in answer["explanation"]
    assert all(item["score"] == counts[item["id"]] for item in answer["items"])
    assert_ranked(answer, 6)
    status, defaults = call(server.url, "/recommend", {})  # history defaults to [] and k to 10
    assert status == 200 and defaults["cold_start"] is True and defaults["items"][:6] == answer["items"]
    assert len(defaults["items"]) == 10


def test_search_by_free_text(server):
    status, answer = call(server.url, "/search", {"query": "  gentle moisturiser for dry skin ", "k": 5})
    assert status == 200 and answer["query"] == "gentle moisturiser for dry skin"
    assert_ranked(answer, 5)


def test_searches_are_encoded_in_a_lower_priority_process_that_ends_with_the_server(twotower_dir, tiny, tmp_path):
    "`recbook serve` encodes /search queries in a child process of its own, at a lower CPU priority, with the same answers."
    model = load_recommender(twotower_dir)
    expected = RecommendationService(model, tiny[0]).search_batch([("gentle moisturiser", 5)])[0]
    with serve(twotower_dir, tmp_path) as server:
        health = call(server.url, "/healthz")[1]
        searcher = health["search_process"]
        assert searcher not in (None, health["pid"]) and _running(searcher)
        assert os.getpriority(os.PRIO_PROCESS, searcher) > os.getpriority(os.PRIO_PROCESS, health["pid"])
        status, answer = call(server.url, "/search", {"query": "gentle moisturiser", "k": 5})
        assert status == 200 and [i["id"] for i in answer["items"]] == [i["id"] for i in expected["items"]]
        assert [i["score"] for i in answer["items"]] == pytest.approx([i["score"] for i in expected["items"]], abs=1e-3)
        os.kill(health["pid"], signal.SIGKILL)  # the server alone, not its process group: it cannot stop its child
    deadline = time.monotonic() + 30
    while _running(searcher) and time.monotonic() < deadline: time.sleep(0.2)
    assert not _running(searcher), "the search process outlived its server"
    with BackgroundServer(twotower_dir, exit_after=600, args=["--search-thread"], log=tmp_path / "thread.log") as server:
        health = call(server.url, "/healthz")[1]
        assert health["search_process"] is None and call(server.url, "/search", {"query": "gentle moisturiser"})[0] == 200


def test_search_without_a_text_tower_says_why(sasrec_server):
    status, answer = call(sasrec_server.url, "/search", {"query": "shampoo"})
    assert status == 400 and "text tower" in answer["error"] and answer["field"] == "query"
    status, answer = call(sasrec_server.url, "/recommend", {"history": [1, 2], "query": "shampoo"})
    assert status == 400 and "text tower" in answer["error"] and answer["field"] == "query"
    assert call(sasrec_server.url, "/recommend", {"history": [1, 2]})[0] == 200, "the rest of the API still works"


def test_recommend_fuses_a_typed_query_with_the_history(server, twotower_dir, tiny):
    "`query` is fused late with the history (chapter 7's best combination): the answer is the model's, through HTTP as in-process."
    from recbook.adaptation import fused_vectors

    history = [1, 2, 3]
    plain = call(server.url, "/recommend", {"history": history, "k": 5, "explain": "none"})[1]
    status, typed = call(server.url, "/recommend", {"history": history, "k": 5, "query": " sunscreen ", "explain": "none"})
    assert status == 200 and not typed["cold_start"]
    model = load_recommender(twotower_dir)
    items = model.item_vectors()
    user = fused_vectors(model.user_vectors([np.array(history)]), model.query_vectors(["sunscreen"]), items,
                         ServeConfig().query_weight)[0]
    scores = items @ user
    scores[history] = -np.inf
    assert [i["score"] for i in typed["items"]] == pytest.approx(np.sort(scores[1:])[::-1][:5], abs=1e-3)
    assert [i["score"] for i in typed["items"]] != pytest.approx([i["score"] for i in plain["items"]], abs=1e-3)
    alone = call(server.url, "/recommend", {"history": [], "k": 5, "query": "sunscreen"})[1]  # a query alone: no cold start
    searched = call(server.url, "/search", {"query": "sunscreen", "k": 5})[1]
    assert not alone["cold_start"] and [i["id"] for i in alone["items"]] == [i["id"] for i in searched["items"]]
    assert "typed" in alone["explanation"] and all("because" not in i for i in alone["items"])
    asins = set(tiny[0].items.asin.iloc[np.array(history) - 1])
    for explain, one in [("similarity", history), ("occlusion", history), ("occlusion", history[:1])]:
        status, answer = call(server.url, "/recommend", {"history": one, "k": 3, "query": "sunscreen", "explain": explain})
        named = {r["asin"] for i in answer["items"] for r in i["because"]}
        assert status == 200 and named and named <= asins, (explain, one, named)


def test_a_batch_mixing_typed_plain_query_only_and_cold_requests_answers_each_as_alone(twotower_dir, tiny):
    service = RecommendationService(load_recommender(twotower_dir), tiny[0])
    requests = [RecQuery(np.array([1, 2, 3]), 4, query="sunscreen"), RecQuery(np.array([4, 5]), 4),
                RecQuery(np.array([], dtype=np.int64), 4, query="shampoo"), RecQuery(np.array([], dtype=np.int64), 4),
                RecQuery(np.array([6]), 4, query="lipstick", explain="occlusion")]
    together = service.recommend_batch(requests)
    for request, answer in zip(requests, together):
        alone = service.recommend_batch([request])[0]
        assert [i["id"] for i in answer["items"]] == [i["id"] for i in alone["items"]]
        assert [i["score"] for i in answer["items"]] == pytest.approx([i["score"] for i in alone["items"]], abs=1e-4)
    assert [a["cold_start"] for a in together] == [False, False, False, True, False]


def test_occluding_a_one_item_history_with_a_query_keeps_the_fused_scale(twotower_dir, tiny):
    "The contribution of the only history item is the full fused score minus the query's share of it, (1 - w) h / sd."
    from recbook.adaptation import fused_vectors

    model = load_recommender(twotower_dir)
    weight = ServeConfig().query_weight
    answer = RecommendationService(model, tiny[0]).recommend_batch(
        [RecQuery(np.array([6]), 3, query="lipstick", explain="occlusion")])[0]
    items = model.item_vectors()
    history, query = model.user_vectors([np.array([6])]), model.query_vectors(["lipstick"])
    share = fused_vectors(history, query, items, weight) - fused_vectors(np.zeros_like(history), query, items, weight)
    for item in answer["items"]:
        assert item["because"][0]["id"] == 6
        assert item["because"][0]["contribution"] == pytest.approx(float(share[0] @ items[item["id"]]), rel=1e-3, abs=1e-4)


def test_a_store_from_before_pseudonyms_is_converted_when_opened(tmp_path):
    import sqlite3

    path = tmp_path / "feedback.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as db:  # what a store written before chapter 8 holds: raw user ids
        db.execute("INSERT INTO events (time, user, event, item, asin, history) VALUES (1, 'raw-7', 'click', 3, NULL, '[]')")
    FeedbackStore(path).close()
    assert [e["user"] for e in FeedbackStore.read(path)] == pseudonyms(["raw-7"], pseudonym_key())


def test_the_query_weight_moves_recommend_from_the_history_to_search(twotower_dir, tiny):
    "Weight 0 answers as the history alone, weight 1 as /search of the query: late fusion spans the two."
    model, history = load_recommender(twotower_dir), np.array([1, 2, 3])
    answer = lambda weight, request: RecommendationService(model, tiny[0], config=ServeConfig(query_weight=weight)
                                                           ).recommend_batch([request])[0]["items"]
    ids = lambda items: [i["id"] for i in items]
    typed = RecQuery(history, 5, query="sunscreen", explain="none")
    plain = answer(0.0, RecQuery(history, 5, explain="none"))
    assert ids(answer(0.0, typed)) == ids(plain)
    searched = RecommendationService(model, tiny[0]).search_batch([("sunscreen", 20)])[0]["items"]
    assert ids(answer(1.0, typed)) == [i for i in ids(searched) if i not in set(history.tolist())][:5]
    assert ids(answer(1.0, typed)) != ids(plain)


BAD_REQUESTS = {  # case: (path, JSON payload or raw bytes, HTTP status, field, words the message must contain)
    "unknown ids": ("/recommend", {"history": [1, 999999, "B000NOTREAL"]}, 422, "history", ["999999", "'B000NOTREAL'"]),
    "k = 0": ("/recommend", {"history": [1], "k": 0}, 422, "k", ["k:", "got 0"]),
    "k over MAX_K": ("/recommend", {"history": [1], "k": MAX_K + 1}, 422, "k", [f"got {MAX_K + 1}"]),
    "k as a string": ("/recommend", {"history": [1], "k": "ten"}, 422, "k", ["'ten'"]),
    "k as a float": ("/recommend", {"history": [1], "k": 2.5}, 422, "k", ["2.5"]),
    "history not a list": ("/recommend", {"history": "B00538TSMU"}, 422, "history", ["list"]),
    "a float in the history": ("/recommend", {"history": [1, 2.5]}, 422, "history[1]", ["2.5"]),
    "a boolean in the history": ("/recommend", {"history": [True]}, 422, "history[0]", ["bool"]),
    "unknown field": ("/recommend", {"history": [1], "kk": 3}, 422, "kk", ["kk"]),
    "unknown explanation": ("/recommend", {"history": [1], "explain": "magic"}, 422, "explain", ["'magic'"]),
    "malformed JSON": ("/recommend", b'{"history": [1,', 400, "body", ["malformed JSON"]),
    "a 5,000-digit integer in the history": ("/recommend", b'{"history": [1, ' + b"9" * 5000 + b"]}", 422,
                                            "history[1]", ["5,000 digits"]),
    "a 5,000-digit k": ("/recommend", b'{"history": [1], "k": -' + b"9" * 5000 + b"}", 422, "k", ["5,000 digits"]),
    "a 5,000-digit item in feedback": ("/feedback", b'{"user": "u", "event": "click", "item": ' + b"1" * 5000 + b"}",
                                       422, "item", ["5,000 digits"]),
    "a JSON array body": ("/recommend", [1, 2], 422, "body", []),
    "JSON nested deeper than the parser goes": ("/recommend", b'{"history": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
                                                "body", []),
    "deeply nested feedback": ("/feedback", b'{"user": "u", "event": "click", "item": ' + b"[" * 5000 + b"]" * 5000
                               + b"}", 400, "body", []),
    "no body": ("/recommend", b"", 422, "body", []),
    "oversized body": ("/recommend", b" " * (MAX_BODY_BYTES + 1), 413, "body", [f"{MAX_BODY_BYTES:,}"]),
    "blank query": ("/search", {"query": "   "}, 422, "query", ["blank"]),
    "empty query in /recommend": ("/recommend", {"history": [1], "query": ""}, 422, "query", ["at least 1 character"]),
    "blank query in /recommend": ("/recommend", {"history": [1], "query": "  "}, 422, "query", ["blank"]),
    "too long a query in /recommend": ("/recommend", {"history": [1], "query": "a" * (MAX_QUERY_CHARS + 1)}, 422,
                                       "query", [f"at most {MAX_QUERY_CHARS} characters"]),
    "a number as the query": ("/recommend", {"history": [1], "query": 42}, 422, "query", ["string"]),
    "query missing": ("/search", {"k": 3}, 422, "query", ["required"]),
    "feedback without user": ("/feedback", {"item": 1, "event": "click"}, 422, "user", ["required"]),
    "unknown event": ("/feedback", {"user": "u", "item": 1, "event": "like"}, 422, "event", ["'like'"]),
    "feedback for an unknown item": ("/feedback", {"user": "u", "item": "B000NOTREAL", "event": "click"}, 422, "item",
                                     ["'B000NOTREAL'"]),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_field(server, case):
    path, body, expected, field, words = BAD_REQUESTS[case]
    status, answer = call(server.url, path, data=body) if isinstance(body, bytes) else call(server.url, path, body)
    assert (status, answer["field"]) == (expected, field), answer
    assert all(word in answer["error"] for word in words), answer["error"]
    assert call(server.url, "/healthz")[0] == 200


def post_chunked(url: str, path: str, payload) -> tuple[int, dict]:
    "POST JSON without a Content-Length (chunked transfer encoding): a request the /recommend fast path leaves to FastAPI."
    import http.client
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=iter([json.dumps(payload).encode()]), encode_chunked=True,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_fast_path_answers_exactly_as_the_fastapi_route(server, histories):
    payload = {"history": histories[2].tolist(), "k": 7, "explain": "occlusion"}
    before = call(server.url, "/healthz")[1]["fast_path_requests"]
    fast = call(server.url, "/recommend", payload)
    assert call(server.url, "/healthz")[1]["fast_path_requests"] == before + 1
    routed = post_chunked(server.url, "/recommend", payload)
    assert call(server.url, "/healthz")[1]["fast_path_requests"] == before + 1, "a chunked body goes to FastAPI"
    assert fast[0] == routed[0] == 200 and fast[1] == routed[1]
    bad = {"history": [1, 999999], "k": 7}
    assert call(server.url, "/recommend", bad) == post_chunked(server.url, "/recommend", bad)  # the same 422 message
    assert call(server.url, "/healthz")[1]["fast_path_requests"] == before + 1, "rejected requests are not counted"


def test_a_body_that_is_not_json_is_refused(server):
    status, answer = call(server.url, "/recommend", data=b"history=1", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in answer["error"]


def test_the_server_still_answers_after_every_bad_request(server, tiny):
    for path, body, *_ in BAD_REQUESTS.values():
        call(server.url, path, data=body) if isinstance(body, bytes) else call(server.url, path, body)
    status, health = call(server.url, "/healthz")
    assert status == 200 and health["items"] == tiny[0].n_items


def test_load_test_has_no_errors(server, histories):
    payloads = [{"history": h.tolist(), "k": 10} for h in (histories * 2)[:200]]
    result = load_test(server.url, "/recommend", payloads, concurrency=8, max_seconds=60)
    assert (result["errors"], result["answered"]) == (0, 200), result["failures"]
    assert 0 < result["p50 ms"] <= result["p99 ms"] <= result["max ms"] and result["requests_per_s"] > 0
    _, health = call(server.url, "/healthz")
    assert health["batched_requests"] >= health["batches"] > 0



def test_latency_histogram_draws_every_run_with_its_own_request_count():
    runs = {f"run {i}": np.random.default_rng(i).lognormal(1, 0.5, 100 + i) for i in range(7)}  # more than 5 colours
    labels = [t.get_text() for t in plot_latency_histogram(runs).axes[0].get_legend().get_texts()]
    assert labels == [f"run {i} ({100 + i:,} requests)" for i in range(7)]

def test_feedback_survives_a_crash_and_fine_tunes_a_model(sasrec_dir, tiny, tmp_path):
    ds, _ = tiny
    store = tmp_path / "feedback.sqlite"
    events = [{"user": f"shopper-{n % 3}", "item": ds.items.asin[10 + n], "event": ("click", "purchase")[n % 2],
               "history": [1 + n, ds.items.asin[2 + n]]} for n in range(6)]
    with serve(sasrec_dir, tmp_path) as first:
        for number, event in enumerate(events, start=1):
            assert call(first.url, "/feedback", event) == (201, {"stored": True, "event": number})
            logged = FeedbackStore.read(store)  # on disk as soon as it is acknowledged
            assert len(logged) == number and logged[-1]["asin"] == event["item"]
            assert logged[-1]["user"] == pseudonyms([event["user"]], pseudonym_key())[0], "stored as its pseudonym"
        assert logged[0]["history"] == [1, 2] and logged[0]["event"] == "click", "ids resolved before logging"
        first.stop(kill=True)  # SIGKILL: no clean shutdown
    with serve(sasrec_dir, tmp_path) as second:
        assert call(second.url, "/healthz")[1]["feedback_events"] == len(events)
        late = {"user": "late", "item": 1, "event": "click"}
        assert call(second.url, "/feedback", late) == (201, {"stored": True, "event": len(events) + 1})
    assert [e["user"] for e in FeedbackStore.read(store)] == pseudonyms([e["user"] for e in events] + ["late"], pseudonym_key())

    tuned = tmp_path / "tuned"
    result = recbook("finetune", "--model", sasrec_dir, "--feedback", store, "--out", tuned)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 feedback sequences (7 events" in result.stdout
    assert json.loads((tuned / "recommender.json").read_text())["fitted_on"] == "train+feedback"
    evaluated = recbook("evaluate", "--model", tuned, "--dataset", "beauty-tiny", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    assert report["dataset"] == "beauty-tiny" and 0 <= report["NDCG@10"] <= 1


def test_server_processes_sharing_a_store_lose_no_acknowledged_event_when_killed(sasrec_dir, tiny, tmp_path):
    "Two servers on one store, one of them with two worker processes, SIGKILLed in the middle of a burst of feedback."
    import threading

    store = tmp_path / "feedback.sqlite"
    acknowledged, errors = [], []
    with BackgroundServer(sasrec_dir, feedback=store, exit_after=600, args=["--workers", "2"],
                          log=tmp_path / "a.log") as a, \
            BackgroundServer(sasrec_dir, feedback=store, exit_after=600, log=tmp_path / "b.log") as b:
        pids, deadline = {call(b.url, "/healthz")[1]["pid"]}, time.monotonic() + 60
        while len(pids) < 3 and time.monotonic() < deadline:  # new connections reach either of a's workers
            pids.add(call(a.url, "/healthz")[1]["pid"])
        stop = threading.Event()

        def burst(url, name):
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    status, answer = call(url, "/feedback", {"user": f"{name}-{n}", "item": 1 + n % 50, "event": "click"},
                                          timeout=10)
                except OSError:  # killed mid-request: never acknowledged
                    continue
                (acknowledged if status == 201 else errors).append((f"{name}-{n}", answer))

        threads = [threading.Thread(target=burst, args=(server.url, f"{server.port}-{t}"))
                   for server in (a, b) for t in range(3)]
        for t in threads: t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 150 and not errors and time.monotonic() < deadline: time.sleep(0.05)
        a.stop(kill=True)
        b.stop(kill=True)
        stop.set()
        for t in threads: t.join(60)
    assert not errors, errors[:3]
    assert len(acknowledged) >= 150, f"only {len(acknowledged)} events acknowledged in 120 s"
    assert len(pids) == 3, "server a answered from both of its workers"
    stored = {e["user"]: e["id"] for e in FeedbackStore.read(store)}
    assert len(stored) == len(FeedbackStore.read(store)), "no event stored twice"
    key = pseudonym_key()
    assert all(stored.get(pseudonyms([user], key)[0]) == answer["event"] for user, answer in acknowledged), \
        "every acknowledged event, as numbered"
    with serve(sasrec_dir, tmp_path) as again:
        number = call(again.url, "/feedback", {"user": "after", "item": 1, "event": "click"})[1]["event"]
    assert number > max(stored.values()), "numbers are never reused"


def test_a_busy_feedback_store_is_a_503_and_the_store_stays_usable(sasrec_dir, tmp_path):
    "Another process holding the write lock past the timeout: the event is refused with 503, and the next one is stored."
    import sqlite3

    store = tmp_path / "feedback.sqlite"
    service = RecommendationService.from_dir(sasrec_dir, feedback=store)
    service.feedback._db.execute("PRAGMA busy_timeout = 200")  # not a minute: the test waits for the refusal
    other = sqlite3.connect(store, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ServingError) as refused:
        service.add_feedback("u", 1, "click")
    assert refused.value.status == 503 and refused.value.field == "feedback" and "try again" in str(refused.value)
    other.execute("ROLLBACK")
    other.close()
    assert service.add_feedback("u", 1, "click") == 1 and service.feedback.count == 1, "no transaction left open"
    service.feedback.close()


def test_serve_exit_after_counts_from_the_loaded_model_and_exits_cleanly(sasrec_dir, tmp_path):
    "`--exit-after`: status 0 (not a signal's 143), and the store closed (SQLite removes its WAL file on the last close)."
    store = tmp_path / "feedback.sqlite"
    result = recbook("serve", "--model", sasrec_dir, "--port", free_port(), "--feedback", store, "--exit-after", 3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recbook serve:" in result.stdout and store.is_file() and not store.with_name(store.name + "-wal").exists()


def test_recommend_writes_every_users_top_k_by_their_ids_and_refuses_bad_input(sasrec_dir, tmp_path):
    "`recbook recommend`: all users, whole histories, no history item returned; bad input stops it with nothing written."
    import pandas as pd

    ds = load_dataset("beauty-tiny")
    result = recbook("recommend", "--model", sasrec_dir, "--out", tmp_path / "all.parquet", "--k", 7, "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    recs = pd.read_parquet(tmp_path / "all.parquet")
    assert list(recs.columns) == ["user", "rank", "item", "id", "title", "score"] and len(recs) == ds.n_users * 7
    names = pseudonyms(ds.user_ids, pseudonym_key())  # users leave only as keyed pseudonyms (chapter 8)
    assert set(recs.user.astype(str)) == set(names) and (recs.groupby("user")["rank"].max() == 7).all()
    assert not set(recs.user.astype(str)) & set(map(str, ds.user_ids)), "no raw user id in the file"
    histories = {n: set(s.tolist()) for n, s in zip(names, ds.sequences)}  # train + valid + test items
    assert not any(item in histories[str(user)] for user, item in zip(recs.user, recs.id))
    assert (recs.groupby("user")["score"].diff().dropna() <= 0).all()
    asins = dict(zip(range(1, ds.n_items + 1), ds.items["asin"].astype(str)))
    assert all(asins[i] == a for i, a in zip(recs.id, recs.item)), "the shop's item ids"

    users = names[:2]
    (tmp_path / "users.txt").write_text(f"{users[0]}\n\nnobody\n{users[1]}\n")
    unknown = recbook("recommend", "--model", sasrec_dir, "--users", tmp_path / "users.txt", "--out", tmp_path / "u.csv")
    assert unknown.returncode == 2 and "'nobody'" in unknown.stderr and "1 of the 3" in unknown.stderr
    skipped = recbook("recommend", "--model", sasrec_dir, "--users", tmp_path / "users.txt", "--out", tmp_path / "u.csv",
                      "--skip-unknown", "--k", 3, "--quiet")
    assert skipped.returncode == 0 and "1 unknown ids skipped" in skipped.stdout
    assert sorted(set(pd.read_csv(tmp_path / "u.csv", dtype={"user": str}).user)) == sorted(users)
    (tmp_path / "empty.txt").write_text("\n \n")
    for args, words in [(["--users", tmp_path / "empty.txt"], ["empty.txt", "no user ids"]),
                        (["--k", "0"], ["--k", "positive integer"]),
                        (["--k", 10**6], ["at most", "items"]),
                        (["--out", tmp_path / "missing" / "r.csv"], ["missing", "no such folder"]),
                        (["--out", tmp_path / "r.xlsx"], [".parquet or .csv"])]:
        bad = recbook("recommend", "--model", sasrec_dir, "--out", tmp_path / "bad.csv", *args)
        assert bad.returncode == 2 and all(w in bad.stderr for w in map(str, words)), (args, bad.stderr[-500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet", "empty.txt", "u.csv", "users.txt"], \
        "nothing half-written, no temporary files left"


def test_onnx_user_tower_gives_pytorchs_top_10_for_every_beauty_user(tmp_path):
    """The exported graph on ONNX Runtime against PyTorch, for all 22,363 Beauty users' whole histories (an untrained
    SASRec of the smoke size: the export, not the accuracy, is under test), within the stated score tolerance."""
    from recbook.serving import OnnxRecommender, export_onnx, onnx_parity
    from recbook.towers import SASRecRecommender
    from recbook.training import SMOKE_TOWERS, build_network

    beauty = load_dataset("beauty")
    SASRecRecommender(build_network("sasrec", beauty, SMOKE_TOWERS, seed=0), "beauty").save(tmp_path / "model")
    result = recbook("export", "--model", tmp_path / "model", "--onnx", tmp_path / "onnx")
    assert result.returncode == 0 and "user_tower.onnx" in result.stdout, result.stderr[-2000:]
    assert not result.stderr.strip(), "the exporter's progress and warnings stay out of the output"
    parity = onnx_parity(load_recommender(tmp_path / "model"), OnnxRecommender(tmp_path / "onnx"), list(beauty.sequences))
    assert parity["users"] == 22_363 and parity["largest score difference"] <= parity["tolerance"] == 1e-4
    assert parity["identical lists"] > 0.99
    assert json.loads((tmp_path / "onnx" / "onnx.json").read_text())["items"][:1] == [beauty.items["asin"].iloc[0]]


def test_onnx_export_of_the_two_tower_model_with_its_text_tower(twotower_dir, tmp_path):
    from recbook.serving import OnnxRecommender, export_onnx, onnx_parity

    export_onnx(twotower_dir, tmp_path / "onnx")
    tiny = load_dataset("beauty-tiny")
    parity = onnx_parity(load_recommender(twotower_dir), OnnxRecommender(tmp_path / "onnx"), list(tiny.sequences))
    assert parity["users"] == tiny.n_users and parity["identical lists"] == 1.0
    with pytest.raises(ServingError, match="no user_tower.onnx"):
        OnnxRecommender(tmp_path)


def _running(pid: int) -> bool:
    "Whether process `pid` exists and has not ended (a zombie waiting for its new parent to reap it has ended)."
    try:
        with open(f"/proc/{pid}/stat") as stat: return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError: return False


def test_a_background_server_ends_with_the_process_that_started_it(sasrec_dir, tmp_path):
    "A notebook kernel or test run killed by SIGKILL cannot stop its server: the server notices and stops itself."
    script = (f"import time\nfrom recbook.serving import BackgroundServer\n"
              f"server = BackgroundServer({str(sasrec_dir)!r}, exit_after=600, log={str(tmp_path / 'server.log')!r}).start()\n"
              f"print(server.process.pid, server.url, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, url = parent.stdout.readline().split()
        assert call(url, "/healthz")[0] == 200
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while _running(int(pid)) and time.monotonic() < deadline: time.sleep(0.2)
    assert not _running(int(pid)), f"the server outlived the process that started it:\n{(tmp_path / 'server.log').read_text()}"
