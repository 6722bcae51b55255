"""The site: it builds offline with warnings as errors, and a real browser sees what a reader should see."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COLAB = "https://colab.research.google.com/github/recbook/recbook/blob/main/{}.ipynb"


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [chapter["file"] for chapter in toc.get("chapters", [])]


def test_toc_lists_every_chapter_in_order():
    numbered = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"), key=lambda p: (int(re.match(r"\d+", p.stem)[0]), p.stem))
    on_disk = [f"nbs/{p.stem}" for p in numbered]
    assert toc_files()[1:] == on_disk, "_toc.yml must list every nbs/[0-9]*.ipynb, in numeric order, and no other"
    missing = [name for name in toc_files() if not (ROOT / f"{name}.ipynb").is_file()]
    assert missing == [], f"_toc.yml lists notebooks that do not exist: {missing}"


def test_front_page_links_every_chapter_of_the_toc():
    "The front page's chapter table is the table of contents: each chapter linked, in order, none 'in progress'."
    import json

    front = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in front["cells"] if c["cell_type"] == "markdown")
    table = text.split("## The chapters", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"^\| *\d+ *\| *\[[^\]]+\]\((\d\d_[a-z_]+)\.ipynb\)", table, flags=re.M)
    assert [f"nbs/{name}" for name in linked] == toc_files()[1:]
    assert "in progress" not in text.lower() and "being written" not in text.lower()
    assert (ROOT / "nbs" / "images" / "course-map.svg").is_file() and "images/course-map.svg" in table


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "Build the book from a clean output folder, exactly as documented: -W -n --keep-going."
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output",
                             str(out), "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return out / "_build" / "html"


def browse(page: Path, tmp_path: Path) -> str:
    "The page's DOM after a headless Chromium has loaded it and run its scripts."
    if CHROMIUM is None:
        if os.environ.get("RECBOOK_ALLOW_NO_BROWSER") == "1":
            pytest.skip("chromium is not installed and RECBOOK_ALLOW_NO_BROWSER=1")
        pytest.fail("chromium is not installed: run `bash tools/test.sh`, which installs Debian's chromium")
    profile = tmp_path / f"profile-{page.stem}"
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--virtual-time-budget=5000",  # the page's load handlers run before the dump
                             f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-3000:]
    return result.stdout


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"<[^>]+>", "\n", dom)


def directive_lines(notebook: Path) -> set[str]:
    "The nbdev directive lines of a notebook's code cells (a `#| ...` line, not a comment that merely contains `# |`)."
    import json

    cells = json.loads(notebook.read_text())["cells"]
    return {line.strip() for cell in cells if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if re.match(r"\s*#\s*\|", line)}


def no_directives_shown(dom: str, notebook: Path) -> list[str]:
    "Visible lines that are one of the notebook's nbdev directives, or the code of a cell that should be gone."
    directives = directive_lines(notebook)
    lines = [line.strip() for line in visible_text(dom).splitlines()]
    return [line for line in lines if line in directives or "nbdev_export" in line or "default_exp" in line]


def test_data_chapter_shows_its_plots(site, tmp_path):
    page = site / "nbs" / "01_data.html"
    dom = browse(page, tmp_path)
    images = [src for src in re.findall(r'<img[^>]+src="([^"]+\.png)"', dom) if "/_images/" in src]
    assert len(images) >= 4, images
    assert all((page.parent / src).resolve().is_file() for src in images)
    assert "Summary" in dom and "Exercises" in dom
    assert "The outputs on this page were produced by the code above in full mode" in dom


def test_evaluation_chapter_shows_its_tables_and_plots(site, tmp_path):
    dom = browse(site / "nbs" / "05_evaluation.html", tmp_path)
    assert len([s for s in re.findall(r'<img[^>]+src="([^"]+\.png)"', dom) if "/_images/" in s]) >= 3
    assert dom.count("<table") >= 3 and "ItemKNN (recency" in dom and "inflation factor" in dom


@pytest.mark.parametrize("name", toc_files())
def test_every_chapter_page_opens_in_colab_and_hides_directives(site, tmp_path, name):
    dom = browse(site / f"{name}.html", tmp_path)
    assert COLAB.format(name) in dom
    assert no_directives_shown(dom, ROOT / f"{name}.ipynb") == []
    # the layout the browser computed: every code line fits or wraps (the site's recbook.js counts the cells that
    # would still scroll sideways), and no progress bar or other stderr noise was stored with the outputs
    clipped = re.search(r'data-clipped-code-cells="(\d+)"', dom)
    assert clipped is not None and clipped.group(1) == "0", "code cells that scroll sideways"
    outputs = re.sub(r'<div class="cell_input[^"]*">.*?</pre>', " ", dom, flags=re.S)  # the code itself may name them
    noise = re.findall(r".*(?:\d+%\|[#█▏▎▍▌▋▊▉ ]*\||it/s\]|Loading weights|Writing model shards).*", visible_text(outputs))
    assert noise == [], noise[:3]


def test_front_page_renders(site, tmp_path):
    dom = browse(site / "nbs" / "index.html", tmp_path)
    assert "recbook: e-commerce user-interest modelling with BERT" in dom
    assert "22,363 users" in dom and 'href="01_data.html"' in dom
