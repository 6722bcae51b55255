"""Make Jupyter Book honour nbdev's cell directives.

nbdev marks cells with comment lines such as ``#| export`` or ``#| hide``. Jupyter Book knows nothing of them: it
would print the lines and show hidden cells. This Sphinx extension rewrites each notebook as Sphinx reads it
(the ``source-read`` event hands us the raw ``.ipynb`` JSON, before MyST-NB parses it) and turns directives into
the cell tags MyST-NB understands:

==========================================  =======================================
nbdev directive                              cell tag
==========================================  =======================================
``#| hide``, a cell holding only
``#| default_exp ...``                       ``remove-cell`` (neither code nor output)
``#| echo: false``                           ``remove-input``
``#| output: false``, ``#| hide_output``     ``remove-output``
``#| eval: false``                           ``skip-execution`` (shown, never executed)
==========================================  =======================================

Then every ``#|`` line is stripped from the code a reader sees. Only code cells are touched. Finally, when the
notebook carries an execution record (``tools/notebooks.py run`` writes it), a closing line tells the reader how
and where the outputs on the page were made.
"""
from __future__ import annotations

import json

HIDE_ALL = {"hide"}
TAGS = {
    ("echo", "false"): "remove-input",
    ("output", "false"): "remove-output",
    ("hide_output", ""): "remove-output",
    ("eval", "false"): "skip-execution",
}


def directives(source: str) -> list[tuple[str, str]]:
    "The `#|` directives at the top of a cell as (name, value) pairs, e.g. ('eval', 'false')."
    found = []
    for line in source.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#|"):
            break
        name, _, value = stripped[2:].strip().partition(":")
        if " " in name.strip() and not value:  # `#| default_exp data`: the value follows a space
            name, _, value = name.strip().partition(" ")
        found.append((name.strip(), value.strip().lower()))
    return found


def strip_directives(source: str) -> str:
    "The cell's code without its `#|` lines (and without the blank lines they leave at the top)."
    lines = [line for line in source.splitlines() if not line.lstrip().startswith("#|")]
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


def cell_tags(source: str) -> list[str]:
    "Tags for a code cell from its directives."
    found = directives(source)
    names = {name for name, _ in found}
    code_left = strip_directives(source).strip()
    if names & HIDE_ALL or (not code_left and found):
        return ["remove-cell"]
    tags = [TAGS[(name, value)] for name, value in found if (name, value) in TAGS]
    tags += [TAGS[(name, "")] for name, _ in found if (name, "") in TAGS]
    return sorted(set(tags))


def convert_notebook(nb: dict) -> dict:
    "Tag and strip every code cell of a notebook (a dict in nbformat 4 JSON form); returns the same dict."
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        tags = cell_tags(source)
        if tags:
            metadata = cell.setdefault("metadata", {})
            metadata["tags"] = sorted(set(metadata.get("tags", [])) | set(tags))
        cell["source"] = strip_directives(source)
    record = nb.get("metadata", {}).get("recbook", {}).get("execution")
    if record:
        nb["cells"].append(provenance_cell(record))
    return nb


def provenance_cell(record: dict) -> dict:
    "A closing note that tells the reader how the outputs on the page were made (see tools/notebooks.py)."
    text = (f"*The outputs on this page were produced by the code above in {record.get('mode', '?')} mode on "
            f"{record.get('device', '?')}, {record.get('date', '?')}, in {record.get('seconds', '?')} s "
            f"(Python {record.get('python', '?')}, torch {record.get('torch', 'not used')}, "
            f"code sha256 `{str(record.get('code_sha256', '?'))[:12]}`).*")
    return {"cell_type": "markdown", "id": "recbook-provenance", "metadata": {}, "source": text}


def _on_source_read(app, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    source[0] = json.dumps(convert_notebook(json.loads(source[0])), ensure_ascii=False)


def setup(app):
    app.connect("source-read", _on_source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
