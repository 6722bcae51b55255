"""The Sphinx extension that maps nbdev directives to Jupyter Book cell tags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
from nbdev_directives import cell_tags, convert_notebook, directives, strip_directives  # noqa: E402


def code(source):
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": []}


def test_directive_parsing():
    assert directives("#| default_exp data\n") == [("default_exp", "data")]
    assert directives("#| eval: false\n#| notest\nx = 1\n#| not a directive") == [("eval", "false"), ("notest", "")]
    assert directives("x = 1\n#| hide") == []  # directives only count at the top of a cell


def test_tags_for_each_directive():
    assert cell_tags("#| hide\nimport nbdev") == ["remove-cell"]
    assert cell_tags("#| default_exp data") == ["remove-cell"]
    assert cell_tags("#| eval: false\ntrain()") == ["skip-execution"]
    assert cell_tags("#| echo: false\nplot()") == ["remove-input"]
    assert cell_tags("#| output: false\nfit()") == ["remove-output"]
    assert cell_tags("#| export\ndef f(): pass") == []
    assert cell_tags("x = 1") == []


def test_notebook_conversion_strips_every_directive_line():
    nb = {"cells": [code("#| export\n\ndef f():\n    return 1"), code(["#| hide\n", "secret()"]),
                    {"cell_type": "markdown", "metadata": {}, "source": "#| stays in markdown"}],
          "metadata": {"recbook": {"execution": {"mode": "full", "device": "cpu: test", "date": "2026-01-01",
                                                 "seconds": 1.5, "code_sha256": "ab" * 32}}}}
    out = convert_notebook(nb)
    assert out["cells"][0]["source"] == "def f():\n    return 1" and "tags" not in out["cells"][0]["metadata"]
    assert out["cells"][1]["metadata"]["tags"] == ["remove-cell"] and "#|" not in out["cells"][1]["source"]
    assert out["cells"][2]["source"] == "#| stays in markdown"
    assert "full mode on cpu: test" in out["cells"][-1]["source"]  # the provenance note closes the page


def test_strip_keeps_code_below_directives():
    assert strip_directives("#| export\n#| exporti\n\n\nx = 1\n\ny = 2") == "x = 1\n\ny = 2"
