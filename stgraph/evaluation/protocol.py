"""Cross-validated evaluation: for each fold, fit on the training slides, predict the held-out slide, score.

Everything fitted (gene selection, Harmony, PCA, the model, the baselines) sees the training slides of the
fold only. The held-out slide's truth is its own log-normalised expression over the fold's genes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import config_from_dict, config_to_dict
from ..data.collection import SlideCollection
from ..inference.predict import predict_slide
from ..metrics import evaluate_arrays, per_gene_table
from ..metrics.report import summarize_folds, to_markdown_table, write_csv_atomic, write_json_atomic
from ..models import create_image_encoder
from ..models.weights import check_pretrained_weights
from ..preprocess.prepare import fit_preprocessor, prepare_slide, preprocessing_key, uncorrected_expression
from ..training.job import train_model
from .baselines import BASELINES
from .folds import Fold
from .stats import ablation_table, summarize_seeds
from ..keys import Key

__all__ = ["cross_validate", "evaluate_fold", "baseline_fold", "run_fold", "FoldPreprocessing", "SUMMARY_METRICS",
           "check_results_dir", "RESULT_NAMES", "with_seed"]

#: What :func:`cross_validate` writes at the top of its results folder.
RESULT_NAMES = ("results.csv", "results.json", "summary.md", "ablations.csv", "pcc_per_fold.png", "maps", "runs")


def check_results_dir(out_dir: str | Path, force: bool = False) -> None:
    """Before any compute: ``out_dir`` is a writable folder that is not a run folder, holding no earlier
    results unless ``force`` (which replaces them)."""
    from ..utils.io import check_not_in_run_folder, check_writable_dir

    out = Path(out_dir)
    check_writable_dir(out, what="results folder")
    check_not_in_run_folder(out / "results.csv", what="results")
    existing = [n for n in RESULT_NAMES if (out / n).exists()] if out.is_dir() else []
    if existing and not force:
        raise FileExistsError(f"results folder {out} already holds {existing} (use --force to replace them)")

SUMMARY_METRICS = ("pcc_acg", "pcc_heg50", "pcc_hvg50", "pcc_mg", "n_r_gt_0.3", "rmse", "mae", "ssim",
                   "hit_at_10")
#: The trust columns (stgraph.trust.metrics) of the second summary table, for runs with a trust record.
TRUST_SUMMARY = ("trust_spearman", "trust_spearman_slide", "reliable_n", "reliable_r", "reliable_gt_0.1",
                 "unreliable_r", "coverage_80", "coverage_90", "coverage_95", "width_80", "width_90", "width_95",
                 "ood_false_alarm")


def _score(method: str, fold: Fold, pred: np.ndarray, true: np.ndarray, genes: Sequence[str],
           markers: Optional[Sequence[str]], extra: dict) -> dict:
    metrics = evaluate_arrays(pred, true, list(genes), markers=markers)
    return {"method": method, "fold": fold.name, "test_slide": ",".join(fold.test_ids), **extra, **metrics}


class FoldPreprocessing:
    """One fold's fitted preprocessing, shared by every method whose data settings match
    (:func:`~stgraph.preprocess.prepare.preprocessing_key`): gene selection, Harmony and PCA are fitted once."""

    def __init__(self, train: Sequence):
        self.train = list(train)
        self._fitted: dict[str, tuple] = {}

    def get(self, config) -> tuple:
        key = preprocessing_key(config)
        if key not in self._fitted:
            self._fitted[key] = fit_preprocessor(config, self.train)
        return self._fitted[key]


def evaluate_fold(name: str, config, collection: SlideCollection, fold: Fold,
                  markers: Optional[Sequence[str]] = None, run_dir: Optional[Path] = None,
                  keep_predictions: bool = False,
                  preprocessing: Optional[FoldPreprocessing] = None) -> tuple[dict, Optional[tuple]]:
    """Train ``config`` on the fold's training slides, predict its test slide, return the metric row: the
    product's own path, step by step, as a user runs it.

    ``train`` writes a run folder (``run_dir``, or a temporary one), ``load_run`` reads it back,
    ``predict_slide`` predicts the test slide from its image, ``write_prediction`` writes the ``.h5ad``, and
    the written file is scored against the test slide's own counts in :data:`~stgraph.data.pp.EXPRESSION_UNITS`
    (:func:`~stgraph.metrics.evaluate_prediction`, aligned by spot and gene name), so a fold's score is the
    score of the file ``stgraph train`` + ``stgraph predict`` would write. The fold's fitted preprocessing
    (``preprocessing``) is shared between configs with the same data settings: it is what ``train`` would fit.
    """
    import tempfile

    import anndata

    from ..data import pp
    from ..inference.predict import write_prediction
    from ..metrics import evaluate_prediction
    from ..runfolder import load_run

    train = [collection[i] for i in fold.train_ids]
    test = collection[fold.test_ids[0]]
    preprocessing = preprocessing if preprocessing is not None else FoldPreprocessing(train)
    with tempfile.TemporaryDirectory(prefix="stgraph-fold-") as tmp:
        out = Path(run_dir) if run_dir is not None else Path(tmp) / "run"
        t0 = time.perf_counter()
        run = train_model(config, train, out=out, force=True, progress=False, preprocessed=preprocessing.get(config))
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = load_run(out, device=str(next(run.model.parameters()).device))
        path = write_prediction(predict_slide(loaded, test), Path(tmp) / f"{fold.name}.h5ad")
        t_pred = time.perf_counter() - t0
        written = anndata.read_h5ad(path)
    truth = pp.log_normalised(test)
    metrics = evaluate_prediction(written, truth, markers=markers)
    measured = set(map(str, truth.var_names))
    scored = [g for g in map(str, written.var_names) if g in measured]  # the genes the held-out slide measured
    if loaded.trust is not None and Key.var.expected_r in written.var:
        # The trust itself, measured on the held-out slide's truth (coverage, reliability ranking, OOD).
        from ..trust.metrics import trust_metrics

        t = truth[written.obs_names, scored].X
        t = np.asarray(t.toarray() if hasattr(t, "toarray") else t, dtype=np.float64)
        sub = written[:, scored]
        metrics.update(trust_metrics(np.asarray(sub.X, np.float64), t, loaded.trust.select_genes(scored),
                                     sub.var[Key.var.expected_r_slide].to_numpy(),
                                     sub.var[Key.var.reliable].to_numpy(),
                                     written.obs[Key.obs.in_distribution].to_numpy()))
    extra = {"n_genes_model": written.n_vars, "train_seconds": round(t_train, 2), "predict_seconds": round(t_pred, 2),
             "best_epoch": run.result.best_epoch, "choices": json.dumps(run.model.choices, default=str)}
    row = {"method": name, "fold": fold.name, "test_slide": ",".join(fold.test_ids), **extra, **metrics}
    if not keep_predictions:
        return row, None
    true = np.asarray(truth[written.obs_names, scored].X.toarray() if hasattr(truth.X, "toarray")
                      else truth[written.obs_names, scored].X)
    return row, (np.asarray(written[:, scored].X), true, scored)


def with_seed(config, offset: int):
    """A copy of ``config`` whose ``train.seed`` is moved by ``offset`` (seed ``offset`` of a seeded evaluation)."""
    if offset == 0:
        return config
    seeded = config_from_dict(config_to_dict(config))
    seeded.train.seed = int(config.train.seed) + int(offset)
    return seeded


def frozen_backbone_config(config):
    """A copy of ``config`` whose backbone is frozen with cached features (what the baselines use)."""
    frozen = config_from_dict(config_to_dict(config))
    frozen.model.image_encoder.freeze = "all"
    frozen.model.image_encoder.cache_features = True
    # Baselines see the raw backbone features of the spot's own patch, whatever views the method adds.
    frozen.model.image_encoder.context_scale = None
    frozen.model.image_encoder.neighbour_context = False
    return frozen


def baseline_fold(config, collection: SlideCollection, fold: Fold, markers: Optional[Sequence[str]] = None,
                  k: int = 50, keep_predictions: bool = False,
                  preprocessing: Optional[FoldPreprocessing] = None,
                  names: Optional[Sequence[str]] = None) -> tuple[list[dict], dict]:
    """The registered baselines (:data:`~stgraph.evaluation.baselines.BASELINES`; ``names``: these only) on
    one fold, with ``config``'s genes and (frozen) backbone."""
    train = [collection[i] for i in fold.train_ids]
    test = collection[fold.test_ids[0]]
    frozen = frozen_backbone_config(config)
    preprocessing = preprocessing if preprocessing is not None else FoldPreprocessing(train)
    prep, expr = preprocessing.get(frozen)
    encoder = create_image_encoder(frozen)
    feats = lambda ad, e=None: prepare_slide(ad, frozen, prep, expr=e, image_encoder=encoder,  # noqa: E731
                                             with_graph=False).features
    train_x = np.concatenate([feats(ad, expr[sid]) for ad, sid in zip(train, expr)])
    # Targets in the space the truth is scored in: uncorrected log1p(normalised) expression (Harmony, when
    # on, corrects only the methods' training targets and embeddings).
    train_y = np.concatenate(uncorrected_expression(frozen, prep, expr, train))
    test_x = feats(test)
    true = prep.expression(test)
    train_ids = np.concatenate([[sid] * len(expr[sid]) for sid in expr])
    view_features: dict = {}  # views (as a sorted tuple) → (train, test) features with those views

    def inputs(fn):
        views = getattr(fn, "views", None)
        if not views:
            return train_x, test_x
        key = tuple(sorted(views.items()))
        if key not in view_features:
            viewed = config_from_dict(config_to_dict(frozen))
            for field_name, value in views.items():
                setattr(viewed.model.image_encoder, field_name, value)
            vfeats = lambda ad, e=None: prepare_slide(ad, viewed, prep, expr=e, image_encoder=encoder,  # noqa: E731
                                                      with_graph=True).features
            view_features[key] = (np.concatenate([vfeats(ad, expr[sid]) for ad, sid in zip(train, expr)]),
                                  vfeats(test))
        return view_features[key]

    preds = {}
    for name in (BASELINES.names() if names is None else [BASELINES.check(n) for n in names]):
        fn = BASELINES.get(name)
        extra = {"train_slide_ids": train_ids} if getattr(fn, "needs_slide_ids", False) else {}
        preds[name] = fn(*inputs(fn)[:1], train_y, inputs(fn)[1], k=k, **extra)
    # Scored as the methods are: on the genes the held-out slide measured (align_prediction).
    measured = set(map(str, test.var_names))
    cols = np.asarray([i for i, g in enumerate(prep.genes) if str(g) in measured], dtype=np.int64)
    genes = [prep.genes[i] for i in cols]
    true = true[:, cols]
    preds = {name: np.asarray(p)[:, cols] for name, p in preds.items()}
    extra = {"n_genes_model": len(prep.genes), "n_genes_unmeasured": len(prep.genes) - len(genes)}
    rows = [_score(f"baseline:{name}", fold, p, true, genes, markers, extra) for name, p in preds.items()]
    kept = {name: (p, true, genes) for name, p in preds.items()} if keep_predictions else {}
    return rows, kept


def _n_seeds(config, seeds: int) -> int:
    """Training seeds a config gets: a seed-free model (its spec's ``seeded``: the closed-form ridge) would
    repeat the same fit and the same row."""
    from ..models import model_spec

    return seeds if model_spec(config).seeded else 1


def run_fold(configs: Mapping[str, object], collection: SlideCollection, fold: Fold, out: Optional[Path] = None,
             baselines: bool = True, baseline_config=None, markers: Optional[Sequence[str]] = None,
             keep_runs: bool = False, keep_predictions: bool = False, on_done=None,
             seeds: int = 1) -> tuple[list[dict], dict]:
    """Every config (and the baselines) on one fold, sharing the fold's preprocessing between them.

    Each config is trained ``seeds`` times, with ``train.seed`` + 0, 1, … (the seed-free ridge once); every
    row carries its ``seed``.
    The baselines have no training seed and run once (at the first config's seed).
    Returns the metric rows and, with ``keep_predictions``, ``method → (pred, true, genes)`` (first seed).
    ``on_done(rows_so_far, label)`` is called after each method and seed.
    """
    preprocessing = FoldPreprocessing([collection[i] for i in fold.train_ids])
    rows: list[dict] = []
    kept_all: dict = {}
    for name, config in configs.items():
        for offset in range(_n_seeds(config, seeds)):
            seeded = with_seed(config, offset)
            leaf = name if seeds == 1 else f"{name}/seed{seeded.train.seed}"
            run_dir = out / "runs" / fold.name / leaf if (out is not None and keep_runs) else None
            row, kept = evaluate_fold(name, seeded, collection, fold, markers, run_dir,
                                      keep_predictions=keep_predictions and offset == 0,
                                      preprocessing=preprocessing)
            rows.append({**row, "seed": int(seeded.train.seed)})
            if kept is not None:
                kept_all[name] = kept
            if on_done is not None:
                on_done(rows, name if seeds == 1 else f"{name} seed {seeded.train.seed}")
    if baselines:
        base_config = baseline_config or next(iter(configs.values()))
        base_rows, kept = baseline_fold(base_config, collection, fold, markers, keep_predictions=keep_predictions,
                                        preprocessing=preprocessing,
                                        names=None if baselines is True else list(baselines))
        rows.extend({**r, "seed": int(base_config.train.seed)} for r in base_rows)
        kept_all.update({f"baseline:{k}": v for k, v in kept.items()})
        if on_done is not None:
            on_done(rows, "baselines")
    return rows, kept_all


def _fold_task(args: tuple) -> tuple[list[dict], dict]:
    """One fold in a worker process (``cross_validate(jobs=N)``)."""
    import torch

    from ..plugins import load_plugins

    configs, collection, fold, out, baselines, baseline_config, markers, keep_runs, keep, threads, device, seeds = args
    for config in configs.values():  # a fresh (spawned) interpreter: the configs' plugins register again
        load_plugins(config.plugins)
    torch.set_num_threads(threads)
    if device is not None:
        for config in configs.values():
            config.train.device = device
    return run_fold(configs, collection, fold, out, baselines, baseline_config, markers, keep_runs, keep,
                    seeds=seeds)


def _worker_devices(configs: Mapping[str, object], jobs: int) -> list[Optional[str]]:
    """A GPU per worker, round robin, when the configs train on CUDA (auto on a GPU machine); else None."""
    import torch

    wants_cuda = any(str(c.train.device) in ("auto", "cuda") for c in configs.values())
    if not (wants_cuda and torch.cuda.is_available()):
        return [None] * jobs
    return [f"cuda:{i % torch.cuda.device_count()}" for i in range(jobs)]


def cross_validate(configs: Mapping[str, object], collection: SlideCollection, folds: Sequence[Fold],
                   out_dir: Optional[str | Path] = None, baselines: bool = True, baseline_config=None,
                   markers: Optional[Sequence[str]] = None, keep_runs: bool = False,
                   progress: bool = True, jobs: int = 1, seeds: int = 1,
                   ablations: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
    """Run every config (and the baselines) on every fold; write per-fold rows and a summary.

    Parameters
    ----------
    configs
        method name → :class:`~stgraph.config.Config`.
    collection
        All slides (raw counts).
    folds
        From :func:`~stgraph.evaluation.make_folds`.
    out_dir
        Writes ``results.csv``, ``results.json``, ``summary.md``, ``pcc_per_fold.png`` and, per method, the
        maps of its best and worst genes on the first fold (``maps/``).
    baseline_config
        Genes and frozen backbone of the baselines (default: the first config).
    baselines
        ``True``: every registered baseline; ``False``: none; a list of names: those.
    jobs
        Folds evaluated at once, each in its own process (the machine's cores are split between them; on
        a GPU machine each process gets a GPU, round robin). Within a fold, methods with the same data
        settings share one fitted preprocessing (gene selection, Harmony, PCA).
    seeds
        Train every config this many times per fold (``train.seed`` + 0 … seeds − 1). Tables then give the
        mean ± sd over folds of each fold's seed mean (:mod:`stgraph.evaluation.stats`).
    ablations
        ``{ablation method: full method}``: ``summary.md`` adds each ablation's paired difference to its full
        model with a 95 % t-interval over folds of the seed-mean differences ("no effect detected" when it
        covers 0); also written to ``ablations.csv``.

    Returns
    -------
    DataFrame with one row per (method, fold).
    """
    out = Path(out_dir) if out_dir is not None else None
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    if seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    unknown = sorted({n for pair in (ablations or {}).items() for n in pair} - set(configs))
    if unknown:
        raise ValueError(f"ablation pairs name methods that are not evaluated: {', '.join(unknown)}")
    for config in configs.values():  # before any fold: a missing backbone file fails here, named
        check_pretrained_weights(config)
    rows: list[dict] = []
    first_fold_predictions: dict = {}
    jobs = min(jobs, len(folds)) if folds else 1
    per_fold = sum(_n_seeds(c, seeds) for c in configs.values()) + (1 if baselines else 0)
    bar = tqdm(total=len(folds) * per_fold, desc="evaluate", unit="run", disable=not progress)
    if jobs == 1:
        for fold in folds:
            def on_done(fold_rows, label, fold=fold):
                bar.set_postfix_str(f"{label} / {fold.name}")
                bar.update()
                if out is not None:  # rows of the finished folds, then this fold's so far
                    write_csv_atomic(pd.DataFrame(rows + fold_rows), out / "results.csv")

            fold_rows, kept = run_fold(configs, collection, fold, out, baselines, baseline_config, markers,
                                       keep_runs, keep_predictions=fold is folds[0], on_done=on_done,
                                       seeds=seeds)
            rows.extend(fold_rows)
            if fold is folds[0]:
                first_fold_predictions = kept
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        devices = _worker_devices(configs, jobs)
        tasks = [(dict(configs), collection, fold, out, baselines, baseline_config, markers, keep_runs,
                  i == 0, threads, devices[i % jobs], seeds) for i, fold in enumerate(folds)]
        # spawn: a fresh interpreter per worker (forking a process that has run torch can deadlock).
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            for i, (fold_rows, kept) in enumerate(pool.map(_fold_task, tasks)):
                rows.extend(fold_rows)
                if i == 0:
                    first_fold_predictions = kept
                bar.set_postfix_str(folds[i].name)
                bar.update(per_fold)
                if out is not None:
                    write_csv_atomic(pd.DataFrame(rows), out / "results.csv")
    bar.close()
    frame = pd.DataFrame(rows)
    if out is not None:
        write_report(frame, out, collection, folds[0], first_fold_predictions, ablations=ablations, configs=configs)
    return frame


def _setting(frame: pd.DataFrame, configs: Optional[Mapping[str, object]]) -> str:
    """The first lines of a summary: what was evaluated (folds, seeds, epochs, genes), so a table is never read
    without its conditions."""
    folds = list(dict.fromkeys(frame["fold"].astype(str))) if "fold" in frame.columns else []
    seeds = sorted(frame["seed"].dropna().astype(int).unique().tolist()) if "seed" in frame.columns else []
    lines = [f"Folds ({len(folds)}): {', '.join(folds)}; training seeds: {', '.join(map(str, seeds)) or '-'}."]
    for name, config in (configs or {}).items():
        from ..models import model_spec

        trained = (f"{config.train.epochs} epochs" if model_spec(config).trainer else "fitted in one call")
        genes = config.data.genes if config.data.genes in ("hvg_union", "shared") else Path(config.data.genes).name
        if "n_genes_model" in frame.columns and (frame["method"] == name).any():
            counts = sorted(set(frame.loc[frame["method"] == name, "n_genes_model"].astype(int)))
            genes += f", {'–'.join(map(str, (counts[0], counts[-1]))) if len(counts) > 1 else counts[0]} genes"
        lines.append(f"- {name}: model.kind {config.model.kind}, {trained}, genes {genes}")
    return "\n".join(lines) + "\n\n"


def write_report(frame: pd.DataFrame, out: Path, collection: SlideCollection, fold: Fold,
                 predictions: Mapping[str, tuple], ablations: Optional[Mapping[str, str]] = None,
                 configs: Optional[Mapping[str, object]] = None) -> None:
    """results.csv/json, summary.md (mean ± sd over folds of the seed means; paired ablation differences),
    a per-fold PCC plot, best/worst gene maps."""
    import matplotlib.pyplot as plt

    from ..pl.benchmark import plot_fold_pcc
    from ..pl.spatial import plot_genes

    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(frame, out / "results.csv")
    write_json_atomic(frame.to_dict(orient="records"), out / "results.json")
    metrics = [m for m in SUMMARY_METRICS if m in frame.columns]
    n_seeds = int(frame["seed"].nunique()) if "seed" in frame.columns else 1
    if n_seeds > 1:
        summary = summarize_seeds(frame, metrics)
        head = (f"Mean ± sd over folds of each fold's mean over {n_seeds} training seeds (baselines: one run, "
                "no training seed). ")
    else:
        summary = summarize_folds(frame)
        head = "Mean ± sd over folds. "
    head = _setting(frame, configs) + head
    text = (head + "Pearson of the mean-profile baseline is undefined (constant prediction) and shown as nan.\n\n"
            + to_markdown_table(summary, metrics) + "\n")
    trust_cols = [m for m in TRUST_SUMMARY if m in frame.columns]
    if trust_cols and frame[trust_cols[0]].notna().any():
        trusted = frame[frame[trust_cols[0]].notna()]
        tsum = summarize_seeds(trusted, trust_cols) if n_seeds > 1 else summarize_folds(trusted[["method", "fold"] + trust_cols])
        text += ("\nHow far to trust the predictions (stgraph.trust, measured on each held-out slide): Spearman of the "
                 "expected per-gene r (run; adjusted to the slide) with the realised r; the genes flagged reliable, "
                 "their mean realised r and the share above 0.1, the others' mean r; coverage of the 80/90/95 % "
                 "intervals and their width over the training values' central interval; the share of spots "
                 "flagged out of distribution.\n\n" + to_markdown_table(tsum, trust_cols) + "\n")
    if ablations:
        diff_metrics = [m for m in ("pcc_acg", "pcc_heg50", "pcc_hvg50", "rmse") if m in frame.columns]
        table = ablation_table(frame, ablations, diff_metrics)
        if not table.empty:
            write_csv_atomic(table, out / "ablations.csv")
            text += ("\nPaired difference to the full model (ablation − full): mean over folds of the "
                     "fold-level seed-mean differences, [95 % Student-t interval over folds]; an interval "
                     "covering 0 reads \"no effect detected\".\n\n"
                     + to_markdown_table(table.set_index("method"), ["vs"] + diff_metrics) + "\n")
    (out / "summary.md").write_text(text)
    # One point per (method, held-out section): the seed mean, as in the tables.
    per_fold = frame.groupby(["method", "fold"], sort=False, as_index=False)["pcc_acg"].mean()
    fig = plot_fold_pcc(per_fold, metric="pcc_acg", path=out / "pcc_per_fold.png")
    plt.close(fig)

    import anndata

    test = collection[fold.test_ids[0]]
    for method, (pred, true, genes) in predictions.items():
        if method == "baseline:mean_profile":
            continue
        table = per_gene_table(pred, true, list(genes)).dropna(subset=["pearson"])
        if table.empty:
            continue
        ranked = table.sort_values("pearson")
        chosen = [ranked["gene"].iloc[-1], ranked["gene"].iloc[-2], ranked["gene"].iloc[0]]
        pred_ad = anndata.AnnData(X=pred, obs=pd.DataFrame(index=test.obs_names.copy()),
                                  var=pd.DataFrame(index=list(genes)))
        true_ad = anndata.AnnData(X=true, obs=pd.DataFrame(index=test.obs_names.copy()),
                                  var=pd.DataFrame(index=list(genes)))
        for ad in (pred_ad, true_ad):
            ad.obsm[Key.obsm.spatial] = np.asarray(test.obsm[Key.obsm.spatial])
            ad.uns[Key.uns.spatial] = test.uns.get(Key.uns.spatial, {})
        safe = method.replace(":", "_")
        fig = plot_genes(pred_ad, chosen, adata_true=true_ad, path=out / "maps" / f"{safe}_{fold.name}.png")
        plt.close(fig)
