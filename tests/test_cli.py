"""The `recbook` command line, run as a user would: as a separate process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


def recbook(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "recbook", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_data_stats_json_prints_the_benchmark_counts():
    result = recbook("data", "stats", "--dataset", "beauty", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["loo_train_interactions"] == 153_776


def test_data_stats_table_for_the_tiny_set():
    result = recbook("data", "stats", "--dataset", "beauty-tiny")
    assert result.returncode == 0, result.stderr
    assert "users" in result.stdout and "455" in result.stdout


def test_a_bad_dataset_directory_gets_a_clear_error(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id,position\n1,10,0\n1,ten,1\n")
    result = recbook("data", "stats", "--dataset", tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("recbook: error: ")
    assert "interactions.csv, row 2, line 3, field 'item_id'" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_writes_a_dataset_that_reads_back(tmp_path):
    result = recbook("prepare", "--dataset", "beauty-tiny", "--out", tmp_path / "tiny")
    assert result.returncode == 0, result.stderr
    again = recbook("data", "stats", "--dataset", tmp_path / "tiny", "--json")
    assert json.loads(again.stdout)["interactions"] == 5_970


def test_quickstart_data_step_prints_the_summary_and_writes_the_plots(tmp_path):
    result = recbook("quickstart", "--out", "out", "--data-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "22,363 users" in result.stdout and "loo_train_interactions" in result.stdout
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert plots == ["interactions_over_time.png", "item_popularity.png", "sequence_lengths.png",
                     "top_categories_brands.png"]
    assert json.loads((tmp_path / "out" / "data_summary.json").read_text())["users"] == 22_363


def test_quickstart_runs_every_stage_on_the_tiny_set(tmp_path):
    "The whole pipeline (the full Beauty run takes minutes; its timing is recorded in README.md, not tested)."
    result = recbook("quickstart", "--dataset", "beauty-tiny", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for stage in ("== 1. data", "== 2. pretrained language model", "== 3. training", "== 4. evaluation"):
        assert stage in result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    knn = next(name for name in results["test"] if name.startswith("ItemKNN (decay"))
    assert set(results["test"]) == {"MostPopular", knn, "two-tower (this run)"}
    assert 0 < results["test"]["two-tower (this run)"]["NDCG@10"] <= 1
    assert results["two_tower_above_itemknn"] == (
        results["test"]["two-tower (this run)"]["NDCG@10"] > results["test"][knn]["NDCG@10"]
        and results["test"]["two-tower (this run)"]["HR@10"] > results["test"][knn]["HR@10"])
    assert results["code_sha256"] and results["seconds"]["total"] > 0 and results["device"]
    assert (tmp_path / "out" / "model" / "recommender.json").is_file()
    assert (tmp_path / "out" / "model" / "run.json").is_file()


def test_version_and_usage_errors():
    from recbook import __version__

    assert recbook("--version").stdout.strip() == f"recbook {__version__}"
    missing = recbook("data")
    assert missing.returncode == 2 and "usage:" in missing.stderr


def test_readme_quotes_the_quickstart_record():
    """The README's figures for the main job are the committed record's (results/quickstart-cpu.json, written by a
    full `recbook quickstart` on the 2-core CPU): the book's model above ItemKNN on both metrics, within 10 minutes."""
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "results" / "quickstart-cpu.json").read_text())
    readme = (root / "README.md").read_text()
    ours = record["test"]["two-tower (this run)"]
    knn_name = next(name for name in record["test"] if name.startswith("ItemKNN"))
    knn, pop = record["test"][knn_name], record["test"]["MostPopular"]
    assert record["dataset"] == "beauty" and record["two_tower_above_itemknn"]
    assert ours["NDCG@10"] > knn["NDCG@10"] and ours["HR@10"] > knn["HR@10"]
    minutes, seconds = divmod(round(record["seconds"]["total"]), 60)
    assert record["seconds"]["total"] <= 600
    for quoted in (f"{minutes} min {seconds} s", f"{ours['HR@10']:.4f}", f"{ours['NDCG@10']:.4f}", f"{knn['HR@10']:.4f}",
                   f"{knn['NDCG@10']:.4f}", f"{pop['HR@10']:.4f}", f"{pop['NDCG@10']:.4f}", record["git_commit"]):
        assert quoted in readme, f"README.md does not quote {quoted!r} from results/quickstart-cpu.json"
    # and the chapter's three-seed figure that the same paragraph quotes, from the committed run records
    import statistics

    runs = [json.loads(p.read_text())["metrics"] for p in sorted((root / "results" / "beauty").glob("twotower-minilm-seed*.json"))]
    assert len(runs) == 3
    for metric in ("NDCG@10", "HR@10"):
        values = [run[f"test {metric}"] for run in runs]
        quoted = f"{metric} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert quoted in readme, f"README.md does not quote the records' {quoted!r}"
