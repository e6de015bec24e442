"""The README's result tables are the committed result files: benchmarks/tables.py regenerates them, and a table
that disagrees with its files (an edited number, a result re-run without regenerating) fails here."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_every_readme_table_equals_its_result_files(capsys):
    import tables

    assert tables.main(["--check"]) == 0, capsys.readouterr().err


def test_an_edited_number_is_caught(tmp_path, capsys):
    import tables

    text = (REPO / "README.md").read_text()
    table = tables.TABLES["accuracy_list785"]()
    assert table in text
    first_cell = table.split("\n")[2].split(" | ")[1]  # stgraph's all-gene r, as the result file gives it
    edited = text.replace(f"| {first_cell} |", "| 0.999 ± 0.001 |", 1)
    assert edited != text
    copy = tmp_path / "README.md"
    copy.write_text(edited)
    assert tables.main(["--check", "--file", str(copy)]) == 1
    assert "accuracy_list785" in capsys.readouterr().err


def test_an_unknown_table_name_is_an_error(tmp_path):
    import tables

    (tmp_path / "x.md").write_text("<!-- table: no_such_table -->\n<!-- /table -->\n")
    with pytest.raises(KeyError, match="no_such_table"):
        tables.main(["--check", "--file", str(tmp_path / "x.md")])
