"""Legacy ST sections from the command line (--counts/--spots/--image groups) and sample sheets (--samples)."""
import argparse

import numpy as np
import pytest

from cli.common import query_parent, read_many, read_query, slides_parent
from cli.main import main
from stgraph.data.readers import SampleSheetError, parse_sample_sheet
from tests.test_readers import _write_legacy


def _many(argv):
    return read_many(argparse.ArgumentParser(parents=[slides_parent()]).parse_args(argv))


def test_legacy_groups_are_read_in_order(tmp_path):
    a, b = _write_legacy(tmp_path / "a"), _write_legacy(tmp_path / "b")
    b[0].rename(tmp_path / "b" / "S2.tsv.gz")  # slide ids come from the counts file name
    b = (tmp_path / "b" / "S2.tsv.gz", *b[1:])
    slides = _many(["--counts", str(a[0]), "--spots", str(a[1]), "--image", str(a[2]),
                    "--counts", str(b[0]), "--spots", str(b[1]), "--image", str(b[2])])
    assert [s.obs["slide_id"].iloc[0] for s in slides] == ["S1", "S2"]
    assert [s.n_obs for s in slides] == [3, 3]  # the unselected spot is dropped
    np.testing.assert_array_equal(slides[0].obsm["spatial"][:, 0], [50.0, 100.0, 50.0])


def test_legacy_group_incomplete(tmp_path):
    a = _write_legacy(tmp_path)
    with pytest.raises(ValueError, match="groups.*1 --counts, 1 --spots, 0 --image"):
        _many(["--counts", str(a[0]), "--spots", str(a[1])])
    with pytest.raises(FileNotFoundError, match="--image file not found: .*nope.png"):
        _many(["--counts", str(a[0]), "--spots", str(a[1]), "--image", str(tmp_path / "nope.png")])


def test_sheet_legacy_and_path_layouts(tmp_path):
    a, b = _write_legacy(tmp_path / "a"), _write_legacy(tmp_path / "b")
    (tmp_path / "legacy.csv").write_text(
        "sample_id,counts,spots,image\n"
        f"P1,a/{a[0].name},a/{a[1].name},a/{a[2].name}\n"          # relative to the sheet
        f"P2,{b[0]},{b[1]},{b[2]}\n")
    slides = _many(["--samples", str(tmp_path / "legacy.csv")])
    assert [s.obs["slide_id"].iloc[0] for s in slides] == ["P1", "P2"]  # the sheet's sample_id names the slide
    (tmp_path / "paths.csv").write_text(f"sample_id,path\nX,{tmp_path / 'a'}\n")  # a legacy ST folder
    assert _many(["--samples", str(tmp_path / "paths.csv")])[0].n_obs == 3


@pytest.mark.parametrize("text, match", [
    ("sample_id,counts,spots\nP1,c.tsv.gz,s.tsv\n", r"missing column\(s\) image"),
    ("id,path\nP1,x.h5ad\n", r"missing column\(s\) sample_id"),
    ("sample_id,counts,spots,image\nP1,{c},{s},\n", r"line 2: column 'image' is empty"),
    ("sample_id,counts,spots,image\nP1,{c},{s},{i}\nP1,{c},{s},{i}\n", r"line 3: sample_id 'P1' repeats line 2"),
    ("sample_id,counts,spots,image\nP1,{c},missing.tsv,{i}\n", r"line 2: column 'spots': file not found"),
    ("sample_id,path\n", "no rows"),
])
def test_bad_sheet_names_the_line_and_column(tmp_path, text, match):
    c, s, i = _write_legacy(tmp_path)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(text.format(c=c, s=s, i=i))
    with pytest.raises(SampleSheetError, match=match) as err:
        parse_sample_sheet(sheet)
    assert str(sheet) in str(err.value)


def test_bad_sheet_fails_before_any_compute(tmp_path, capsys):
    """train checks the sheet (one line on stderr, non-zero exit) before reading a slide or building a model."""
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("sample_id,counts,spots,image\nP1,a.tsv.gz,a.tsv,a.png\n")
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/stgraph.yaml", "--samples", str(sheet), "--out", str(run)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("column 'counts': file not found" in line and str(sheet) in line for line in err)
    assert not run.exists()


def test_predict_query_from_legacy_files(tmp_path):
    c, s, i = _write_legacy(tmp_path)
    args = argparse.ArgumentParser(parents=[query_parent()]).parse_args(
        ["--counts", str(c), "--spots", str(s), "--image", str(i)])
    ad = read_query(args)
    assert ad.n_obs == 3 and list(ad.var_names) == ["GA", "GB"]
    with pytest.raises(ValueError, match="--counts goes with --spots"):
        read_query(argparse.ArgumentParser(parents=[query_parent()]).parse_args(["--counts", str(c)]))


@pytest.mark.slow
def test_her2st_sheet_real(tmp_path):
    """The real HER2+ files of C2 and C3 through a sample sheet read like read_her2st reads them."""
    from pathlib import Path

    from stgraph.data.readers import read_her2st

    root = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "her2st"
    if not root.is_dir():
        pytest.skip(f"HER2+ data not at {root}")
    cnts = {p.name.split(".")[0]: p for p in (root / "ST-cnts").iterdir()}
    spots = {p.name.split("_")[0]: p for p in (root / "ST-spotfiles").iterdir()}
    imgs = {p.parent.name: p for p in (root / "ST-imgs").rglob("*.jpg")}
    rows = [f"{s},{cnts[s]},{spots[s]},{imgs[s]}" for s in ("C2", "C3")]
    (tmp_path / "s.csv").write_text("sample_id,counts,spots,image\n" + "\n".join(rows) + "\n")
    slides = _many(["--samples", str(tmp_path / "s.csv")])
    for s, ad in zip(("C2", "C3"), slides):
        ref = read_her2st(root, s)
        assert ad.n_obs == ref.n_obs and ad.n_vars == ref.n_vars
        np.testing.assert_allclose(ad.obsm["spatial"], ref.obsm["spatial"])
