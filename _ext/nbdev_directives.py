"""Make Jupyter Book honour nbdev's cell directives.

nbdev marks cells with comment lines such as ``#| export`` or ``#| hide``. Jupyter Book knows nothing of them: it
would print the lines and show hidden cells. This Sphinx extension rewrites each notebook as Sphinx reads it
(the ``source-read`` event hands us the raw ``.ipynb`` JSON, before MyST-NB parses it) and turns directives into
the cell tags MyST-NB understands:

==========================================  =======================================
nbdev directive                              cell tag
==========================================  =======================================
``#| hide``, ``#| include: false``, a cell
holding only directives (``#| default_exp``)  ``remove-cell`` (neither code nor output)
``#| echo: false``                           ``remove-input``
``#| output: false``, ``#| hide_output``     ``remove-output``
``#| eval: false``                           ``skip-execution`` (shown, never executed)
==========================================  =======================================

Then every ``#|`` line (nbdev also accepts ``# |``, as code formatters write it) is stripped from the code a
reader sees, with the blank lines it leaves at the top. Only code cells are touched. Directives are parsed
exactly as nbdev parses them (``nbdev.process.extract_directives``, ported here because the site build and
``tools/notebooks.py`` must not depend on nbdev's internals), so the site, ``nbdev_test`` and ``nbdev_export``
agree on what a cell says. Finally, when the notebook carries an execution record (``tools/notebooks.py run``
writes it), a closing line tells the reader how and where the outputs on the page were made.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

DIRECTIVE_LINE = re.compile(r"^\s*#\s*\|")  # nbdev's `_dir_pre('python')`
CELL_MAGIC = re.compile(r"^\s*%%\w+")
TAGS = {  # (nbdev key, first argument) -> tag; Quarto-style keys keep their colon, as in nbdev
    ("echo:", "false"): "remove-input",
    ("output:", "false"): "remove-output",
    ("hide_output", None): "remove-output",
    ("eval:", "false"): "skip-execution",
}


def _parse(line: str) -> tuple[str, list[str]] | None:
    "One directive line as nbdev's `_directive` reads it: `#| eval: false` -> ('eval:', ['false'])."
    line = DIRECTIVE_LINE.sub("#|", line)
    if line.strip().endswith(":"):
        line = line.replace(":", "")
    words = line.replace(":", ": ").strip()[2:].split()
    return (words[0], words[1:]) if words else None


def directives(source: str) -> dict[str, list[str]]:
    "The directives at the top of a cell (until its first line of code), keyed as nbdev keys `cell.directives_`."
    found = {}
    for line in source.splitlines():
        if line.strip() and not DIRECTIVE_LINE.match(line) and not CELL_MAGIC.match(line):
            break
        parsed = _parse(line) if line.strip() else None
        if parsed:
            found[parsed[0]] = parsed[1]
    return found


def strip_directives(source: str) -> str:
    "The cell's code without its `#|` lines (and without the blank lines they leave at the top)."
    lines = [line for line in source.splitlines() if not DIRECTIVE_LINE.match(line)]
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


def cell_tags(source: str) -> list[str]:
    "MyST-NB tags for a code cell, from its directives."
    found = directives(source)
    if not found:
        return []
    first = {name: (args[0].lower() if args else None) for name, args in found.items()}
    if "hide" in first or first.get("include:") == "false" or not strip_directives(source).strip():
        return ["remove-cell"]
    return sorted({tag for (name, value), tag in TAGS.items() if name in first and first[name] == value})


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
            f"(Python {record.get('python', '?')}, torch {record.get('torch') or 'not installed'}, "
            f"code sha256 `{str(record.get('code_sha256', '?'))[:12]}`).*")
    return {"cell_type": "markdown", "id": "recbook-provenance", "metadata": {}, "source": text}


def _on_source_read(app, docname: str, source: list[str]) -> None:
    "Sphinx hands notebooks over as their JSON text; rewrite it before MyST-NB's parser sees it."
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    source[0] = json.dumps(convert_notebook(json.loads(source[0])), ensure_ascii=False)


def _add_static(app):
    "The site's own CSS (code lines wrap) and JS (counts code cells that would still scroll sideways, for the tests)."
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    app.connect("source-read", _on_source_read)
    app.connect("builder-inited", _add_static)
    app.add_css_file("recbook.css")
    app.add_js_file("recbook.js")
    return {"version": "1.1", "parallel_read_safe": True, "parallel_write_safe": True}
