"""The Sphinx extension that maps nbdev directives to Jupyter Book cell tags."""
import json
import sys
from pathlib import Path

import pytest
from fastcore.basics import AttrDict
from nbdev.process import extract_directives

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
from nbdev_directives import cell_tags, convert_notebook, directives, strip_directives  # noqa: E402

CELLS = ["#| default_exp data", "#| eval: false\n#| notest\nx = 1\n#| not a directive", "x = 1\n#| hide",
         "# | export\ndef f(): pass", "#|eval:false\nx", "#| hide:\n", "#| eval: False # slow\nx",
         "#|  echo:  false\n\n#| output: false\n\nx = 1\n#| later", "%%time\n#| hide\nx = 1",
         "#| export some.module\nx", "#| include: false\n1", "", "\n\n#| exporti\n\n"]


def code(source):
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": []}


@pytest.mark.parametrize("source", CELLS)
def test_directives_are_parsed_as_nbdev_parses_them(source):
    assert directives(source) == extract_directives(AttrDict(source=source), remove=False)


def test_tags_for_each_directive():
    assert cell_tags("#| hide\nimport nbdev") == ["remove-cell"]
    assert cell_tags("#| default_exp data") == ["remove-cell"]
    assert cell_tags("#| include: false\nsetup()") == ["remove-cell"]
    assert cell_tags("#| eval: false\ntrain()") == ["skip-execution"]
    assert cell_tags("#|eval:False\ntrain()") == ["skip-execution"]
    assert cell_tags("#| echo: false\nplot()") == ["remove-input"]
    assert cell_tags("#| output: false\nfit()") == ["remove-output"]
    assert cell_tags("#| hide_output\nfit()") == ["remove-output"]
    assert cell_tags("#| echo: false\n#| output: false\nfit()") == ["remove-input", "remove-output"]
    assert cell_tags("#| eval: true\n#| echo: true\nx = 1") == []
    assert cell_tags("#| export\ndef f(): pass") == []
    assert cell_tags("x = 1\n#| hide") == []  # directives only count at the top of a cell
    assert cell_tags("x = 1") == []


def test_strip_keeps_code_below_directives():
    assert strip_directives("#| export\n# | exporti\n\n\nx = 1\n\ny = 2\n#| stray") == "x = 1\n\ny = 2"
    assert strip_directives("%%time\n#| notest\nx = 1") == "%%time\nx = 1"


def test_notebook_conversion_strips_every_directive_line():
    nb = {"cells": [code("#| export\n\ndef f():\n    return 1"), code(["#| hide\n", "secret()"]),
                    code(["#| eval: false\n", "train()"]),
                    {"cell_type": "markdown", "metadata": {}, "source": "#| stays in markdown"}],
          "metadata": {"recbook": {"execution": {"mode": "full", "device": "cpu: test", "date": "2026-01-01",
                                                 "seconds": 1.5, "code_sha256": "ab" * 32, "torch": None}}}}
    out = json.loads(json.dumps(convert_notebook(nb)))  # what Sphinx receives must still be plain JSON
    assert out["cells"][0]["source"] == "def f():\n    return 1" and "tags" not in out["cells"][0]["metadata"]
    assert out["cells"][1]["metadata"]["tags"] == ["remove-cell"] and "#|" not in out["cells"][1]["source"]
    assert out["cells"][2]["metadata"]["tags"] == ["skip-execution"] and out["cells"][2]["source"] == "train()"
    assert out["cells"][3]["source"] == "#| stays in markdown"
    assert "full mode on cpu: test" in out["cells"][-1]["source"]  # the provenance note closes the page
    assert "torch not installed" in out["cells"][-1]["source"]


def test_notebook_without_record_gets_no_provenance_note():
    nb = {"cells": [code("x = 1")], "metadata": {}}
    assert len(convert_notebook(nb)["cells"]) == 1
