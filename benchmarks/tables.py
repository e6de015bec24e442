"""The README's result tables, generated from the committed result files (a figure is a file).

Each table in README.md sits between ``<!-- table: NAME -->`` and ``<!-- /table -->``; :data:`TABLES` says how
NAME is computed from ``benchmarks/results/``, and every table ends with a line naming its source files, the
command that wrote them, the commit and the machine (from the result file's ``provenance`` and ``machine``).

    python benchmarks/tables.py            # rewrite the tables in README.md
    python benchmarks/tables.py --check    # exit 1 when README.md differs from the result files (a fast test)

Mean ± sd over folds of the per-fold seed means, and paired differences with a 95 % Student-t interval over
folds, are computed by :mod:`stgraph.evaluation.stats`, the same functions ``stgraph evaluate`` reports with.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"

#: Column labels of the metrics the tables show.
LABELS = {"pcc_acg": "PCC all genes", "pcc_heg50": "PCC HEG-50", "pcc_hvg50": "PCC HVG-50", "rmse": "RMSE",
          "ssim": "SSIM", "n_r_gt_0.3": "genes r > 0.3"}
ACCURACY = ["pcc_acg", "pcc_heg50", "pcc_hvg50", "n_r_gt_0.3", "rmse", "ssim"]

#: Method names in result files → what the README calls them.
NAMES = {
    "stgraph": "**stgraph** (`stgraph.yaml`: reduced-rank ridge)",
    "stgraph_graph": "stgraph_graph (`stgraph_graph.yaml`: the ridge + a learned graph-attention residual)",
    "stgraph-no_context_crop": "stgraph without the 2× context crop",
    "stgraph-no_neighbours": "stgraph without neighbour features",
    "stgraph-no_centering": "stgraph without per-slide centring",
    "stgraph-full_rank": "stgraph at full rank (λ by LOSO)",
    "stgraph-previous_ridge": "stgraph's previous ridge (full rank, λ = 3e4)",
    "stgraph+smoothing": "stgraph + graph smoothing (α = 0.25)",
    "bleep": "BLEEP", "heclip": "HECLIP", "mclstexp": "mclSTExp", "stgchb": "ST-GCHB",
    "stgchb-no_nHSIC": "ST-GCHB without nHSIC", "stgchb-no_image_DGI": "ST-GCHB without image DGI",
    "stgchb-no_gene_DGI": "ST-GCHB without gene DGI", "stgchb-no_PCA": "ST-GCHB without PCA (gene branch on expression)",
    "stgchb-no_grad_clip": "ST-GCHB without gradient clipping",
    "baseline:untrained_retrieval": "baseline: untrained retrieval",
    "baseline:ridge": "baseline: features → PCA → ridge",
    "baseline:kernel_ridge": "baseline: RBF kernel ridge on stgraph's features (γ, λ by LOSO)",
    "baseline:mean_profile": "baseline: mean training profile",
}


def _name(method: str) -> str:
    return NAMES.get(method, method)


def _short(method: str) -> str:
    """A name for difference tables: the label without its parenthesis."""
    return _name(method).replace("**", "").split(" (`")[0]


def _rows(folder: str) -> pd.DataFrame:
    path = RESULTS / folder / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the benchmark that writes it (see its JSON's command)")
    return pd.read_csv(path)


def _meta(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _cell(mean: float, sd: float, fmt: str = ".3f") -> str:
    if not math.isfinite(mean):
        return "undefined"
    return f"{mean:{fmt}} ± {sd:{fmt}}" if math.isfinite(sd) else f"{mean:{fmt}}"


def _fmt_for(metric: str) -> str:
    return ".1f" if metric.startswith("n_") or metric.endswith("_n") else ".3f"


def _source(names: Sequence[str]) -> str:
    parts = []
    for name in names:
        meta = _meta(name)
        prov, machine = meta.get("provenance", {}), meta.get("machine", {})
        where = f"`benchmarks/results/{name}.json`"
        if (RESULTS / name).is_dir():
            where += f" and `{name}/`"
        if prov:
            cpu = f"{machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores"
            gpu = "a CUDA GPU" if machine.get("cuda_available") else "no GPU"
            where += (f": `{prov.get('command', '?')}` at {prov.get('commit', '?')}, {cpu}, {gpu}, "
                      f"{meta.get('seconds', 0) / 60:.0f} min")
        parts.append(where)
    return "Source: " + "; ".join(parts) + "."


def summary_table(folder: str, methods: Sequence[str], metrics: Sequence[str] = ACCURACY,
                  extra: Sequence[tuple[str, str]] = ()) -> Callable[[], str]:
    """Mean ± sd over folds (of the per-fold seed means) of ``metrics`` for ``methods`` of one results folder;
    ``extra``: (folder, method) rows from other folders appended."""
    def make() -> str:
        from stgraph.evaluation.stats import summarize_seeds

        lines = ["| method | " + " | ".join(LABELS.get(m, m) for m in metrics) + " | folds × seeds |",
                 "| --- |" + " --- |" * (len(metrics) + 1)]
        sources = [folder]
        for src, method in [(folder, m) for m in methods] + list(extra):
            rows = _rows(src)
            if src not in sources:
                sources.append(src)
            rows = rows[rows["method"] == method]
            if rows.empty:
                raise KeyError(f"{src}/results.csv has no rows of {method!r}")
            s = summarize_seeds(rows, metrics).loc[method]
            cells = [_cell(s[(m, "mean")], s[(m, "sd")], _fmt_for(m)) for m in metrics]
            lines.append(f"| {_name(method)} | " + " | ".join(cells) + f" | {int(s[('n_folds', '')])} × "
                         f"{int(s[('n_seeds', '')])} |")
        return "\n".join(lines) + "\n\n" + _source(sources)
    return make


def difference_table(folder: str, pairs: Sequence[tuple[str, str]],
                     metrics: Sequence[str] = ("pcc_acg", "pcc_heg50")) -> Callable[[], str]:
    """Paired differences (method − base) by fold with 95 % t-intervals, for ``pairs`` of one results folder."""
    def make() -> str:
        from stgraph.evaluation.stats import format_difference, paired_difference

        rows = _rows(folder)
        lines = ["| method | − | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                 "| --- | --- |" + " --- |" * len(metrics)]
        for method, base in pairs:
            cells = [format_difference(paired_difference(rows, method, base, m)) for m in metrics]
            lines.append(f"| {_short(method)} | {_short(base)} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + _source([folder])
    return make


TRUST = ["trust_spearman", "reliable_n", "reliable_r", "reliable_gt_0.1", "unreliable_r", "coverage_80",
         "coverage_90", "coverage_95", "width_90", "ood_false_alarm"]
LABELS.update({"trust_spearman": "Spearman(expected r, realised r)", "reliable_n": "genes flagged reliable",
               "reliable_r": "their realised r", "reliable_gt_0.1": "share of them > 0.1",
               "unreliable_r": "the others' r", "coverage_80": "80 % interval coverage",
               "coverage_90": "90 % coverage", "coverage_95": "95 % coverage",
               "width_90": "90 % width / training spread", "ood_false_alarm": "own spots flagged OOD"})


def ood_table(name: str = "trust_her2st_ood") -> Callable[[], str]:
    """Per shift: mean AUROC of the OOD score over the six held-out sections, mean share of spots flagged, and in
    how many sections the slide warning fired; plus the unshifted sections' own false alarms."""
    shifts = {"stain_moderate": "moderate stain change", "stain_strong": "strong stain change (hue +90°)",
              "blur": "blur", "inverted": "colour inversion", "non_tissue": "non-tissue image"}

    def make() -> str:
        meta = _meta(name)
        if not meta:
            raise FileNotFoundError(f"benchmarks/results/{name}.json is missing")
        frame = pd.DataFrame(meta["rows"])
        n = len(frame)
        lines = ["| held-out section shown as | AUROC (shifted vs own spots) | spots flagged | slide warned |",
                 "| --- | --- | --- | --- |",
                 f"| itself (no shift) | | {frame['false_alarm'].mean():.3f} | "
                 f"{int(frame['slide_warning'].sum())} of {n} |"]
        for key, label in shifts.items():
            lines.append(f"| {label} | {_cell(frame[f'{key}_auroc'].mean(), frame[f'{key}_auroc'].std())} | "
                         f"{_cell(frame[f'{key}_flagged'].mean(), frame[f'{key}_flagged'].std())} | "
                         f"{int(frame[f'{key}_warning'].sum())} of {n} |")
        return "\n".join(lines) + "\n\n" + _source([name])
    return make


def _load(name: str) -> dict:
    meta = _meta(name)
    if not meta:
        raise FileNotFoundError(f"benchmarks/results/{name}.json is missing")
    return meta


def _where(name: str, part: dict | None = None) -> str:
    """``file`` (CPU, cores; the command when the file records one); ``part``: the machine and provenance of the
    rows quoted, where a file keeps rows of an earlier run beside its own."""
    meta = part if part is not None else _load(name)
    machine, prov = meta.get("machine") or {}, meta.get("provenance") or {}
    prov = prov if isinstance(prov, dict) else {}
    cpu = f"{machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores"
    cmd = f"; `{prov['command']}` at {prov.get('commit', '?')}" if prov.get("command") else "; command not recorded"
    return f"`{name}.json` ({cpu}{cmd})"


def _line(what: str, figure: str, name: str, part: dict | None = None) -> str:
    """One row of the speed table: the step, its figures, and the file (with machine and command) they are from."""
    return f"| {what} | {figure} | {_where(name, part)} |"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB"


def _row_test_suite() -> list[str]:
    suites = _load("test_suite")["suites"]
    rows = []
    for key in ("fast", "slow"):
        if key in suites:
            s = suites[key]
            rows.append(f"| `{s['make_target']}` (`{s['command']}`) | {s['wall_s'] / 60:.1f} min wall, "
                        f"{s['cpu_s'] / 60:.1f} min CPU; {s['summary'].strip('= ')}; load "
                        f"{s['load_before'][0]:.1f} before | {_where('test_suite')} |")
    return rows


def _row_patches() -> list[str]:
    d = _load("patch_extraction")
    return [f"| patch extraction, HER2+ {d['section']} ({d['n_spots']} spots, {d['patch_size']} px, "
            f"{d['image_px'][0]:,} × {d['image_px'][1]:,} px JPEG decoded once) | {d['extract_patches_s']:.2f} s "
            f"({d['extract_spots_per_s']:.0f} spots/s); {d['cached_extract_s']:.2f} s from the patch cache; peak RSS "
            f"{_gib(d['peak_rss_mib'])} | {_where('patch_extraction')} |"]


def _row_speed() -> list[str]:
    d = _load("speed")
    f = d["feature_extraction"]
    epochs = ", ".join(f"{_name(r['method'])} {r['epoch_seconds_median']:.2f} s" for r in d["training_epochs"])
    n = d["training_epochs"][0]["n_spots"]
    return [f"| frozen `{f['backbone']}` features, {f['n_patches']} patches | {f['pipeline_patches_per_s']:.1f} "
            f"patches/s through stgraph, {f['raw_forward_patches_per_s']:.1f} raw forward of the same backbone | "
            f"{_where('speed')} |",
            f"| training epoch, 5 HER2+ sections ({n:,} spots, cached features; median) | {epochs} | {_where('speed')} |"]


def _row_knn() -> list[str]:
    d = _load("knn_imputation")
    rows = d["results"]
    earlier = d.get("other_rows_from")  # rows kept from an earlier run, with its machine and command

    def pick(**kw):
        return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]

    out = []
    small = pick(n_query=1000, aggregation="mean", n_ref=100000)
    if small:
        cells = "; ".join(f"{r['backend']} {r.get('resolved_index', r['index'])} {r['impute_s']:.2f} s"
                          + (f" (+ build {r['build_s']:.2f} s, recall@50 {r['recall_at_k']:.3f})"
                             if "recall_at_k" in r else "") for r in small)
        out.append(_line("kNN imputation, 1e3 queries × 1e5 reference, k = 50, d = 256, 785 genes", cells,
                         "knn_imputation", earlier))
    big = [r for r in pick(n_query=10000, n_ref=100000) if not r.get("saved")]
    if big:
        cells = "; ".join(f"{r['backend']} ({r.get('resolved_index', r['index'])}, {r.get('data', 'clustered')}) "
                          f"{r['impute_s']:.1f} s + build {r['build_s']:.1f} s"
                          + (f", recall@50 {r['recall_at_k']:.3f}" if "recall_at_k" in r else "") for r in big)
        out.append(_line("kNN imputation, 1e4 queries × 1e5 reference", cells, "knn_imputation", earlier))
    saved = pick(saved="build") + pick(saved="read")
    if saved:
        def cell(r):
            runs = r.get("total_s_runs")
            return (f"index {'built' if r['saved'] == 'build' else 'read from the run folder'}: total "
                    f"{r['total_s']:.2f} s" + (f" (median of {len(runs)} fresh processes, "
                                               f"{min(runs):.2f}–{max(runs):.2f} s)" if runs else "")
                    + f": store load {r['load_s']:.2f} s, index {r['build_s']:.2f} s, imputation "
                    f"{r['impute_s']:.2f} s" + (f", recall@50 {r['recall_at_k']:.3f}" if "recall_at_k" in r else ""))

        read = pick(saved="read")
        met = bool(read) and read[0]["total_s"] < 2 and read[0].get("recall_at_k", 0) >= 0.95
        out.append(f"| kNN, first prediction from a saved run (1e4 queries × 1e5 reference, `auto` → IVF) | "
                   f"{'; '.join(cell(r) for r in saved)}; the target (index read, < 2 s at recall@50 ≥ 0.95) is "
                   f"{'met' if met else 'not met'} | {_where('knn_imputation')} |")
    return out


def _row_wsi() -> list[str]:
    out = []
    for name in ("wsi_predict_40000_patch112", "wsi_predict_40000"):
        if not _meta(name):
            continue
        d = _load(name)
        out.append(f"| whole-slide prediction, {d['size_px']:,} px TIFF at {d['slide_mpp']:g} µm/px, {d['n_spots']:,} "
                   f"spots ({d['grid']} µm grid), `{d['backbone']}` on {d['patch_px']} px patches, torch on "
                   f"{d['torch_threads']} thread | {d['timings']['predict_s']:.0f} s end to end, "
                   f"**{d['throughput_ratio']:.2f}×** the backbone's raw forward rate ({d['end_to_end_spots_per_s']:.0f} "
                   f"vs {d['raw_forward_patches_per_s']:.0f} patches/s), peak RSS {_gib(d['peak_rss_mib']['after_predict_mib'])} "
                   f"for the whole process | {_where(name)} |")
    return out


def _row_cohort_predict() -> list[str]:
    if not _meta("cohort_predict"):
        return []
    d = _load("cohort_predict")

    def cell(r):
        rss = ", ".join(f"{v / 1024:.2f}" for v in r["peak_rss_mib_per_process"].values())
        return (f"{r['slides_per_hour']:.0f} slides/h ({r['seconds'] / 60:.1f} min, {r['spots']:,} spots), peak RSS "
                f"{rss} GiB per process")
    what = (f"cohort prediction, {d['slides']} synthetic {d['size_px']:,} px slides, `{d['config']}` with "
            f"`{d['backbone']}`, the CLI (`--wsi-sheet`)")
    runs = (f"1 process: {cell(d['one_process'])}; 2 processes: {cell(d['two_processes'])} "
            f"(×{d['speedup_two_processes']:.2f}); a second model reusing the stored features: "
            f"{cell(d['second_model_reusing_features'])} (×{d['speedup_reused_features']:.2f})")
    return [_line(what, runs, "cohort_predict")]


def _row_ddp() -> list[str]:
    d = _load("ddp_cpu")
    epochs = "; ".join(f"{r['case']}: {r['epoch_s']:.2f} s/epoch" for r in d["rows"])
    return [_line(f"data-parallel training on CPU ({d['n_spots']} spots, `{d['backbone']}`, batch {d['batch_size']})",
                  f"{epochs}; bf16 autocast {d['bf16_speedup_cpu']:.2f}× faster than float32", "ddp_cpu")]


def _row_cohort_memory() -> list[str]:
    d = _load("cohort_memory")
    a = d["args"]
    loader, raw, summary = d["loader"], d["raw"], d["summary"]
    what = (f"training on a cohort that does not fit in memory: {a['slides']} slides × {a['spots']:,} spots, "
            f"{a['features']}-d features, {a['genes']:,} genes ({d['build']['store_bytes'] / 1e9:.1f} GB store), streamed")
    ratio = summary["loader_over_raw"]
    runs = summary.get("loader_over_raw_runs")
    figure = (f"the data path reads {loader['loader_mb_per_s']:.0f} MB/s against {raw['raw_mb_per_s']:.0f} MB/s raw "
              f"(median runs): {ratio:.2f}×" + (f" (runs {', '.join(f'{r:.2f}' for r in runs)})" if runs else "")
              + f", the ≥ 0.8× target is {'met' if ratio >= 0.8 else 'not met'}; peak RSS "
              f"{_gib(loader['peak_rss_mib'])} (training process, loading), "
              f"{_gib(loader['peak_rss_children_mib'])} (workers)")
    if "train" in d:
        t = d["train"]
        figure += (f"; a BLEEP epoch {t['epoch_seconds'][0]:.0f} s, {100 * t['data_wait_fraction']:.1f} % of it "
                   f"waiting for data, peak RSS {_gib(t['peak_rss_mib'])}")
    return [_line(what, figure, "cohort_memory")]


def _row_spatialdata_read() -> list[str]:
    if not _meta("spatialdata_read"):
        return []
    d = _load("spatialdata_read")
    r, b = d["read"], d["build"]
    what = (f"reading a SpatialData store of {r['n_obs']:,} cells (circles, a {r['n_vars']}-gene CSR table with "
            f"{b['nnz']:,} non-zeros; {b['store_bytes'] / 1e6:.0f} MB) with `read_slide`, spatialdata's import included")
    figure = (f"{r['read_seconds']:.1f} s, peak RSS {_gib(r['peak_rss_mib'])}, counts kept sparse; the < 60 s / "
              f"< 4 GiB target is {'met' if d['summary']['target_met'] else 'not met'}")
    return [_line(what, figure, "spatialdata_read")]


def _row_finetune() -> list[str]:
    d = _load("finetune_epoch")
    what = f"last-stage fine-tuning epoch, HER2+ {', '.join(d['sections'])} ({d['n_spots']} spots, batch {d['batch_size']})"
    return [_line(what, "; ".join(f"{r['case']} {r['epoch_seconds']:.0f} s" for r in d["rows"]), "finetune_epoch")]


def _row_trust_cost() -> list[str]:
    if not _meta("trust_her2st_cost"):
        return []
    d = _load("trust_her2st_cost")
    cells = []
    for name, r in d["methods"].items():
        cells.append(f"{_short(name)}: training {r['without_trust']['train_s']:.1f} → {r['with_trust']['train_s']:.1f} s "
                     f"(×{r['train_ratio']:.2f}), prediction {r['without_trust']['predict_s']:.2f} → "
                     f"{r['with_trust']['predict_s']:.2f} s with 90 % intervals")
    return [f"| the trust record (fold C6, {d['training_slides']} training sections, 785 genes) | "
            + "; ".join(cells) + f" | {_where('trust_her2st_cost')} |"]


def _row_contention() -> list[str]:
    if not _meta("contention"):
        return []
    d = _load("contention")
    what = ("the demo's epoch (cpu/bleep, cached features; median) alone → beside two more of the same trainings, "
            "by OpenMP wait policy")
    cells = "; ".join(f"{p}: {r['alone_s']:.3f} → {r['beside_two_s']:.3f} s (×{r['slowdown']:.1f})"
                      for p, r in d["summary"].items())
    return [_line(what, cells, "contention")]


def speed_table() -> str:
    rows = (_row_patches() + _row_speed() + _row_knn() + _row_wsi() + _row_cohort_predict() + _row_trust_cost()
            + _row_contention() + _row_ddp() + _row_cohort_memory() + _row_finetune()
            + _row_spatialdata_read())
    return "\n".join(["| step | figure | file |", "| --- | --- | --- |", *rows])


def test_suite_table() -> str:
    return "\n".join(["| command | time | file |", "| --- | --- | --- |", *_row_test_suite()])


LIST785 = "accuracy_her2st_list785"
TABLES: dict[str, Callable[[], str]] = {
    "accuracy_list785": summary_table(
        LIST785, ["stgraph", "bleep", "heclip", "mclstexp", "stgchb", "baseline:kernel_ridge",
                  "baseline:untrained_retrieval", "baseline:ridge", "baseline:mean_profile"],
        extra=[("accuracy_her2st_list785_learned_s3", "stgraph_graph")]),
    "ablations_list785": difference_table(
        LIST785, [(m, "stgraph") for m in ("stgraph-full_rank", "stgraph-previous_ridge", "stgraph-no_context_crop",
                                           "stgraph-no_neighbours", "stgraph-no_centering", "stgraph+smoothing")]
        + [("stgraph", "baseline:kernel_ridge"), ("stgraph", "baseline:untrained_retrieval")]),
    "learned_s3": difference_table(
        "accuracy_her2st_list785_learned_s3", [("stgraph_graph", "stgraph"), ("stgraph", "stgraph-previous_ridge")],
        metrics=("pcc_acg", "pcc_heg50", "pcc_hvg50")),
    "patient": summary_table(
        "accuracy_her2st_list785_patient", ["stgraph", "bleep", "heclip", "mclstexp", "stgchb",
                                            "baseline:kernel_ridge", "baseline:untrained_retrieval", "baseline:ridge"],
        metrics=["pcc_acg", "pcc_heg50", "rmse"],
        extra=[("accuracy_her2st_list785_patient_learned_s3", "stgraph_graph")]),
    "patient_learned_s3": difference_table(
        "accuracy_her2st_list785_patient_learned_s3",
        [("stgraph_graph", "stgraph"), ("stgraph", "stgraph-previous_ridge")]),
    "stgchb_s3": summary_table(
        "accuracy_her2st_list785_stgchb_s3", ["stgchb", "stgchb-no_nHSIC", "stgchb-no_image_DGI",
                                              "stgchb-no_gene_DGI", "stgchb-no_PCA", "stgchb-no_grad_clip"],
        metrics=["pcc_acg", "pcc_heg50", "pcc_hvg50", "rmse"]),
    "stgchb_s3_diff": difference_table(
        "accuracy_her2st_list785_stgchb_s3",
        [(m, "stgchb") for m in ("stgchb-no_nHSIC", "stgchb-no_image_DGI", "stgchb-no_gene_DGI", "stgchb-no_PCA",
                                 "stgchb-no_grad_clip")]),
    "stgchb_s3_60ep": difference_table("accuracy_her2st_list785_stgchb_s3_60ep", [("stgchb-no_nHSIC", "stgchb")]),
    "trust_list785": summary_table("trust_her2st_list785", ["stgraph", "stgraph_graph", "bleep"], metrics=TRUST),
    "trust_shipped": summary_table("trust_her2st_shipped", ["stgraph"], metrics=["pcc_acg", "pcc_heg50"] + TRUST),
    "trust_ood": ood_table(),
    "speed": speed_table,
    "test_suite": test_suite_table,
}

_BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def render(text: str, only: Sequence[str] = ()) -> str:
    """``text`` with every table block replaced by its freshly computed table (unknown names are an error)."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"README table {name!r} is not in benchmarks/tables.py TABLES ({', '.join(TABLES)})")
        if only and name not in only:
            return m.group(0)
        return m.group(1) + TABLES[name]() + "\n" + m.group(4)
    return _BLOCK.sub(sub, text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md's tables differ from the results")
    ap.add_argument("--only", nargs="+", default=(), help="these tables only")
    ap.add_argument("--file", default=str(README), help="the Markdown file (default README.md)")
    args = ap.parse_args(argv)
    path = Path(args.file)
    text = path.read_text()
    new = render(text, args.only)
    if args.check:
        if new != text:
            stale = [m.group("name") for m, n in zip(_BLOCK.finditer(text), _BLOCK.finditer(new))
                     if m.group(0) != n.group(0)]
            print(f"{path}: tables differ from benchmarks/results: {', '.join(stale)} "
                  "(run python benchmarks/tables.py)", file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new)
    print(f"{path}: {len(list(_BLOCK.finditer(new)))} tables from benchmarks/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
