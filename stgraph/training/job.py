"""The training job: slides + config → a self-contained run folder (layout: :mod:`stgraph.runfolder`)."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..config import config_to_dict, save_config
from ..data.collection import SlideCollection
from ..data.slide_id import slide_id_of
from ..errors import StgraphError
from ..models import create_model, model_spec
from ..models.weights import check_pretrained_weights
from ..preprocess.embed import embed_slide
from ..preprocess.prepare import (PreparedSlide, check_training_slides, fit_preprocessor, prepare_slide,
                                  uncorrected_expression)
from ..preprocess.resolution import training_resolution
from ..retrieval.reference import ReferenceStore
from ..trust import TRUST_FILE
from ..runfolder import (LOCK_NAME, STATE_COMPLETE, STATE_TRAINING, Run, clean_stale_files, file_records,
                         foreign_entries, read_run_info, remove_run_tree, run_state, save_model, write_run_info)
from ..utils import check_writable_dir, resolve_device, seed_everything
from ..utils.io import current_umask
from ..utils.lock import FolderLock, check_unlocked, is_locked
from .distributed import DistEnv, DistributedError, barrier, init_distributed
from .trainer import Trainer, TrainResult

__all__ = ["train_model", "build_reference", "ResumeMismatchError", "check_train_inputs", "NotARunFolderError"]



def _slides_of(slides) -> list[AnnData]:
    if isinstance(slides, SlideCollection):
        return [slides[i] for i in slides.ids]
    return list(slides)


def build_reference(model, config, slides: Sequence[PreparedSlide], genes: Sequence[str],
                    meta: Optional[dict] = None,
                    expression: Optional[Sequence[np.ndarray]] = None) -> ReferenceStore:
    """Embed the reference slides with the branch ``inference.reference`` names and pair them with their
    expression (n_ref, G): ``expression`` (one (n_i, G) array per slide) when given, else each slide's
    ``expr``. Training passes the uncorrected log1p(normalised) expression here, so Harmony, which shapes
    the training targets and through them the embeddings, never reaches the predicted values."""
    branch = config.inference.reference
    emb = np.concatenate([embed_slide(model, s, branch) for s in slides])
    if expression is None:
        expression = [s.expr for s in slides]
    if [len(e) for e in expression] != [s.n_spots for s in slides]:
        raise ValueError("build_reference: one expression array per slide, with the slide's spots as rows")
    expr = np.concatenate(list(expression)).astype(np.float32)
    return ReferenceStore(
        embeddings=emb,
        expression=expr,
        genes=list(genes),
        slide_ids=np.concatenate([[s.slide_id] * s.n_spots for s in slides]).astype(str),
        spot_ids=np.concatenate([s.barcodes for s in slides]).astype(str),
        kind=branch,
        meta={"method": config.model.name, "similarity": config.inference.similarity, **(meta or {})},
    )


class ResumeMismatchError(StgraphError, ValueError):
    """``--resume`` with a config or data that differ from the run being resumed."""


class NotARunFolderError(StgraphError, FileExistsError):
    """``--force`` aimed at a folder that is not (only) a stgraph run: replacing it could lose the user's files."""


#: Config fields a resume may change (they do not change what is trained on or how).
_RESUMABLE_FIELDS = ("train.epochs", "train.progress", "train.device", "data.cache_dir")
#: Files of a run folder written before training starts; a folder holding only these is a failed start.
_START_FILES = ("config.yaml", "genes.txt", "preprocess.json", "preprocess.npz")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _entries(out: Path) -> set[str]:
    """The folder's names, but for the lock file of a writer."""
    return {p.name for p in out.iterdir()} - {LOCK_NAME}


def _interrupted(out: Path) -> bool:
    """Whether ``run.json`` says the run's training has not completed (a kill, or a writer at work)."""
    try:
        return run_state(read_run_info(out)) != STATE_COMPLETE
    except StgraphError:
        return False


def _is_failed_start(out: Path) -> bool:
    """A folder left by a first ``train`` that failed before its first checkpoint: nothing to keep or resume."""
    names = _entries(out)
    if "run.json" in names and _interrupted(out):
        names.discard("run.json")
    return (bool(names) and names <= set(_START_FILES) | {"checkpoints"}
            and not (out / "checkpoints" / "last.pt").exists() and not foreign_entries(out))


def _recover_interrupted_swap(out: Path) -> None:
    """A kill between the two renames of :func:`_swap_in` leaves the old run as ``.<name>.old-*`` and no
    ``<name>``: put it back (unless its writer is alive: the swap is under way)."""
    if out.exists() or not out.parent.is_dir():
        return
    olds = sorted(p for p in out.parent.glob(f".{out.name}.old-*")
                  if p.is_dir() and not p.is_symlink() and not is_locked(p))
    if olds:
        os.replace(olds[-1], out)


def _check_out_dir(out: Path, force: bool, resume: bool) -> None:
    """Refuse a destination that cannot be used, before anything is read or computed."""
    if force and resume:
        raise ValueError("--force and --resume exclude each other")
    _recover_interrupted_swap(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"run folder {out} exists and is not a folder")
    check_writable_dir(out.parent if not out.exists() else out, what="run folder")
    if out.exists():
        check_unlocked(out)  # a live writer (train, --resume, extend) owns it: refused before any compute
    if resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise FileNotFoundError(f"cannot resume {out}: it has no checkpoints/last.pt")
        return
    if not (out.exists() and _entries(out)):
        return
    if force:
        _check_replaceable(out)
    elif not _is_failed_start(out):
        hint = ("use --force to replace it, or --resume to continue its training"
                if (out / "checkpoints" / "last.pt").is_file()
                and (not (out / "run.json").is_file() or _interrupted(out))
                else "use --force to replace it")
        raise FileExistsError(f"run folder {out} already exists and is not empty ({hint})")


def _check_replaceable(out: Path) -> None:
    """``--force`` replaces a stgraph run folder only: refuse, naming them, when other files are there."""
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise NotARunFolderError(f"--force replaces only a stgraph run folder, and {out} holds {shown}, which "
                                 "stgraph did not write: move them out or choose another --out")


def _check_resume(config, out: Path, adatas: Sequence[AnnData]) -> None:
    """Refuse ``--resume`` when the config or the training slides differ from the run's (touching nothing)."""
    import yaml

    from ..config import config_from_dict

    try:
        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ResumeMismatchError(f"cannot resume {out}: its config.yaml is unreadable ({err})") from err
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(config))
    changed = sorted(k for k in set(old) | set(new)
                     if k not in _RESUMABLE_FIELDS and old.get(k) != new.get(k))
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed[:6])
        raise ResumeMismatchError(f"cannot resume {out}: the config differs from the run's ({detail}); "
                                  "use --force to start a new run")
    info_file = out / "preprocess.json"
    if info_file.is_file():
        old_ids = list(json.loads(info_file.read_text()).get("train_slides", []))
        new_ids = [slide_id_of(ad, default=f"slide{i}") for i, ad in enumerate(adatas)]
        if old_ids and old_ids != new_ids:
            raise ResumeMismatchError(f"cannot resume {out}: it was trained on slides {old_ids}, "
                                      f"not {new_ids}; use --force to start a new run")


def _check_resume_genes(out: Path, genes: Sequence[str]) -> None:
    genes_file = out / "genes.txt"
    if genes_file.is_file():
        old = [g for g in genes_file.read_text().splitlines() if g]
        if old != list(genes):
            diff = sorted(set(old) ^ set(genes))[:10]
            raise ResumeMismatchError(f"cannot resume {out}: its {len(old)} genes differ from the "
                                      f"{len(genes)} selected now (e.g. {diff}); use --force to start a new run")


def _check_gene_file(config) -> None:
    spec = config.data.genes
    if spec not in _GENE_KEYWORDS and not Path(spec).is_file():
        raise FileNotFoundError(f"gene list file not found: {spec} (data.genes)")
    include = config.data.include_genes
    if isinstance(include, str) and not Path(include).is_file():
        raise FileNotFoundError(f"gene list file not found: {include} (data.include_genes)")


_GENE_KEYWORDS = ("hvg_union", "shared")


def _log_resolved_config(config) -> None:
    """The config as it will run (bases merged, overrides applied, paths resolved), at debug level (``-v``)."""
    log = logging.getLogger(__name__)
    if log.isEnabledFor(logging.DEBUG):
        import yaml

        from ..config import config_to_dict

        log.debug("resolved config:\n%s", yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip())


def train_model(config, slides, out: Optional[str | Path] = None, force: bool = False, resume: bool = False,
                progress: Optional[bool] = None, preprocessed: Optional[tuple] = None) -> Run:
    """Fit preprocessing on ``slides``, train, build the reference, and (with ``out``) save a run folder.

    Parameters
    ----------
    config
        :class:`~stgraph.config.Config`.
    slides
        Training slides (a :class:`~stgraph.data.SlideCollection` or AnnData list, raw counts).
    out
        Run folder; must not exist or be empty unless ``force`` (replace) or ``resume`` (continue).
    preprocessed
        ``fit_preprocessor(config, slides)``'s result when the caller already has it (the evaluation
        harness shares one per fold between methods with the same data settings); fitted here otherwise.
    """
    progress = config.train.progress if progress is None else progress
    adatas = _slides_of(slides)
    if not adatas:
        raise ValueError("no training slides given")
    check_training_slides(adatas)  # before the run folder is made
    if out is not None:
        out = resolve_run_link(Path(out), force, resume)
    # Everything that can be checked is checked before any compute or any write.
    check_train_inputs(config, out, force, resume)
    _log_resolved_config(config)
    device = resolve_device(config.train.device)
    dist_env = init_distributed(device)  # a no-op unless launched by torchrun
    if device.type == "cuda" and dist_env.enabled:
        if dist_env.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"{dist_env.world_size} processes on a machine with {torch.cuda.device_count()} "
                                   f"GPU(s): use at most one process per GPU (--nproc "
                                   f"{torch.cuda.device_count()}) or train.device=cpu")
        device = torch.device("cuda", dist_env.local_rank)
        torch.cuda.set_device(device)
    final_dir = Path(out) if out is not None else None
    run_dir = final_dir
    locks: list[FolderLock] = []
    try:
        if final_dir is not None:
            if dist_env.is_main:
                # Own the folder for the whole job (a second writer is refused), then check it again under
                # the lock: the first checks raced with any writer that started meanwhile.
                final_dir.mkdir(parents=True, exist_ok=True)
                locks.append(FolderLock(final_dir).acquire())
                _check_out_dir(final_dir, force, resume)
                clean_stale_files(final_dir)  # temporaries and build folders of killed writers
            if resume:
                _check_resume(config, final_dir, adatas)
            barrier()  # every rank has checked the folder before rank 0 writes into it
            if not dist_env.is_main:
                run_dir = final_dir if resume else None  # other ranks only read checkpoints/last.pt
            elif not resume and _entries(final_dir):
                # --force (or a failed start): build the new run beside the old one, swap it in when complete.
                run_dir = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.new-"))
                locks.append(FolderLock(run_dir, what="run build folder").acquire())
        start = time.perf_counter()
        try:
            run = _train(config, adatas, run_dir, resume, progress, device, dist_env, preprocessed,
                         verify=lambda: [lock.verify() for lock in locks])
            logging.getLogger(__name__).debug("trained %s on %d slide(s) in %.1f s on %s", config.name,
                                              len(adatas), time.perf_counter() - start, device)
        except BaseException:
            if run_dir is not None and run_dir != final_dir:
                remove_run_tree(run_dir)
            raise
        if run_dir is not None and run_dir != final_dir:
            for lock in locks:  # the old run and the build folder are still ours: nobody took them over
                lock.verify()
            _swap_in(run_dir, final_dir)
            locks[-1].folder = final_dir  # the build folder's lock is now the run's
            run.run_dir = final_dir
        barrier()  # the run folder is complete before any rank returns
    finally:
        for lock in locks:
            lock.release()
    return run


def resolve_run_link(out: Path, force: bool = False, resume: bool = False) -> Path:
    """The folder a run is written to when ``out`` is a symbolic link (``runs/latest``): its target, if that is
    itself a stgraph run folder (the link stays, and the log says which run is replaced); a link to anything
    else is refused. Writes and deletes never go through a link otherwise."""
    if not out.is_symlink():
        return out
    target = Path(os.path.realpath(out))
    if not target.is_dir():
        raise NotARunFolderError(f"run folder {out} is a symbolic link to {target}, which is not a folder: stgraph "
                                 "writes a run only into a real folder")
    if not (force or resume):
        return out  # the "already exists" checks name it
    if not ((target / "run.json").is_file() and not foreign_entries(target)):
        raise NotARunFolderError(f"run folder {out} is a symbolic link to {target}, which is not a stgraph run "
                                 "folder: --force replaces only a run folder; stgraph does not write through links")
    logging.getLogger("stgraph").warning("%s is a link to the run %s: %s that run (the link stays)", out, target,
                                         "resuming" if resume else "replacing")
    return target


def check_train_inputs(config, out: Optional[str | Path], force: bool = False, resume: bool = False) -> None:
    """The checks ``train_model`` runs before any compute (the CLI runs them before reading the slides too):
    the gene list file, the pretrained weights (found, not loaded), the device, the cache folder and the run
    folder."""
    _check_gene_file(config)
    check_pretrained_weights(config)  # names model.image_encoder.weights and every place looked; no download
    resolve_device(config.train.device)  # a device this machine lacks fails here, before any slide is read
    if config.data.cache_dir:
        check_writable_dir(config.data.cache_dir, what="cache folder (data.cache_dir)")
    if out is not None:
        _check_out_dir(resolve_run_link(Path(out), force, resume), force, resume)


def _swap_in(new: Path, final: Path) -> None:
    """Replace ``final`` by the complete run ``new``; the old run is removed only once the new one is in place."""
    os.chmod(new, 0o777 & ~current_umask())
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
    os.rmdir(old)
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    remove_run_tree(old)  # its lock file last: a kill halfway leaves a folder the next writer can prove ours


def _train(config, adatas, run_dir: Optional[Path], resume: bool, progress: bool, device: torch.device,
           dist_env: Optional[DistEnv] = None, preprocessed: Optional[tuple] = None, verify=None) -> Run:
    dist_env = dist_env if dist_env is not None else DistEnv()
    writes = run_dir is not None and dist_env.is_main
    if writes and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        # run.json first, saying "training": a kill from here on leaves a folder marked as ours and incomplete
        write_run_info(run_dir, {"state": STATE_TRAINING, **_started(config)})
        save_config(config, run_dir / "config.yaml")

    seed_everything(config.train.seed)  # before the model exists, so its initial weights are seeded too
    preprocessor, expr = preprocessed if preprocessed is not None else fit_preprocessor(config, adatas)
    if run_dir is not None and resume:
        _check_resume_genes(run_dir, preprocessor.genes)
        if writes:  # the run is incomplete until the end, whatever it was (predict refuses it meanwhile)
            try:
                info = read_run_info(run_dir)
            except StgraphError:
                info = _started(config)
            write_run_info(run_dir, {**info, "state": STATE_TRAINING})
    model = create_model(config, preprocessor.spot_in_dim).to(device)
    if dist_env.enabled and not dist_env.is_main:
        barrier()  # rank 0 prepares first and fills the feature cache; the others then read it
    prepared = [
        prepare_slide(ad, config, preprocessor, expr=expr.get(slide_id_of(ad, default=f"slide{i}")), image_encoder=model.image_encoder,
                      device=str(device), progress=progress and dist_env.is_main)
        for i, ad in enumerate(adatas)
    ]
    if dist_env.enabled and dist_env.is_main:
        barrier()
    if writes and not resume:
        preprocessor.save(run_dir)

    if not model_spec(config).trainer:
        # One fit (closed form, or the model's own loop): no Trainer epochs, nothing to resume or log.
        model.fit(prepared)
        result = TrainResult(pd.DataFrame(), None, float("nan"))
        if model.choices:
            chosen = ", ".join(f"{k} = {v}" for k, v in model.choices.items())
            logging.getLogger(__name__).info("fitted %s: %s", config.model.kind, chosen)
    else:
        trainer = Trainer(model, config, prepared, run_dir=run_dir, dist_env=dist_env, device=device)
        result = trainer.fit(resume=resume)
    resolution = training_resolution(config, adatas)
    if not dist_env.is_main:
        # Rank 0 holds the same weights and writes the run; the reference is built once, there.
        return Run(model, config, preprocessor, None, result, None, info={"resolution": resolution})
    # The stored profiles are the uncorrected log1p(normalised) expression, whatever Harmony did to the
    # training targets (which are each slide's expr).
    uncorrected = uncorrected_expression(config, preprocessor, expr, adatas)
    reference = build_reference(model, config, prepared, preprocessor.genes, expression=uncorrected)
    trust = trust_record(config, model, prepared, uncorrected, preprocessor, device, dist_env)

    if run_dir is not None:
        if verify is not None:
            verify()  # the folder's lock is still this writer's before its final files are written
        if resume:  # the same config but for the resumable fields (e.g. more epochs)
            save_config(config, run_dir / "config.yaml")
        save_model(run_dir / "model.pt", model, config, preprocessor.spot_in_dim, result.best_epoch)
        reference.save(run_dir / "reference.h5", overwrite=True)
        if trust is not None:
            trust.save(run_dir / TRUST_FILE)
        _plot_losses(run_dir)
        provenance = {
            "state": STATE_COMPLETE,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": config.model.name,
            "config_name": config.name,
            "train_slides": [s.slide_id for s in prepared],
            "n_reference_spots": int(reference.embeddings.shape[0]),
            "n_genes": len(preprocessor.genes),
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "choices": dict(model.choices),  # what a fit chose, e.g. the ridge's λ and rank chosen by LOSO
            "trust": None if trust is None else trust.summary(config.trust.reliable_r),
            "resolution": resolution,
            "world_size": dist_env.world_size,
            "precision": config.train.precision,
            "device": device.type,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        provenance["files"] = file_records(run_dir)  # sizes and checksums, checked by load_run
        write_run_info(run_dir, provenance)  # last, atomically: the run is complete
    return Run(model, config, preprocessor, reference, result, run_dir, info={"resolution": resolution},
               trust=trust)


def trust_record(config, model, prepared: Sequence[PreparedSlide], expression: Sequence[np.ndarray], preprocessor,
                 device: torch.device, dist_env: Optional[DistEnv] = None):
    """The run's :class:`~stgraph.trust.TrustRecord` (``trust.reliability``), or ``None`` (switched off, one
    training slide, or a Trainer run in several processes).

    Out-of-slide predictions of every training slide come from the model's own fit when it made them
    (:meth:`~stgraph.models.STModel.out_of_slide`: the ridge's nested choice, no extra fit), else from one more
    training per held-out slide, in memory, with the same config (for a Trainer model: K trainings, the
    documented cost of ``trust.reliability`` for contrastive configs). Values are each slide's expression as
    the model was fitted on it (``expression``: uncorrected log1p(counts per 10,000))."""
    import time

    from ..trust import build_trust

    log = logging.getLogger("stgraph")
    if not config.trust.reliability:
        return None
    if len(prepared) < 2:
        log.info("trust: one training slide leaves none to hold out: no reliability, intervals or OOD record")
        return None
    spec = model_spec(config)
    if spec.trainer and dist_env is not None and dist_env.enabled:
        log.warning("trust: a run in several processes does not retrain per held-out slide; no trust record "
                     "(train in one process, or set trust.reliability=false to silence this)")
        return None
    start = time.perf_counter()
    oof = model.out_of_slide()
    method = model.out_of_slide_method
    if oof is not None:
        # The fit's targets: each slide's expr (what its out-of-slide predictions are predictions of).
        y = np.concatenate([s.expr for s in prepared])
    else:
        y = np.concatenate(list(expression))
        oof = np.concatenate([_held_out_prediction(config, prepared, expression, h, preprocessor, device)
                              for h in range(len(prepared))])
        method = f"{method}: {len(prepared)} extra trainings"
    embeddings = np.concatenate([embed_slide(model, s, "image") for s in prepared])
    ids = np.concatenate([[s.slide_id] * s.n_spots for s in prepared])
    record = build_trust(preprocessor.genes, y, oof, ids, embeddings, method, ood_k=config.trust.ood_k)
    log.info("trust: expected per-gene r from %d held-out training slides (%s), %d of %d genes at r ≥ %g, "
             "in %.1f s", len(prepared), method, int(np.sum(record.expected_r >= config.trust.reliable_r)),
             len(record.genes), config.trust.reliable_r, time.perf_counter() - start)
    return record


def _held_out_prediction(config, prepared, expression, held: int, preprocessor, device) -> np.ndarray:
    """Training slide ``held`` predicted by the same config trained on the other slides (in memory)."""
    import time

    start = time.perf_counter()
    inner = [s for i, s in enumerate(prepared) if i != held]
    seed_everything(config.train.seed)
    model = create_model(config, preprocessor.spot_in_dim).to(device)
    if model_spec(config).trainer:
        Trainer(model, config, inner, run_dir=None, device=device).fit()
    else:
        model.fit(inner)
    target = prepared[held]
    if model_spec(config).retrieves:
        reference = build_reference(model, config, inner, preprocessor.genes,
                                    expression=[e for i, e in enumerate(expression) if i != held])
        pred, _ = reference.predict_configured(embed_slide(model, target, "image"), config.inference)
    else:
        pred = model.predict_prepared(target)
    logging.getLogger("stgraph").info("trust: %s predicted from the other training slides in %.1f s",
                                      target.slide_id, time.perf_counter() - start)
    return np.maximum(np.asarray(pred, dtype=np.float64), 0.0)


def _started(config) -> dict:
    """What ``run.json`` says from the start (``"state": "training"`` is added by the caller)."""
    return {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": config.model.name, "config_name": config.name}


def _plot_losses(run_dir: Path) -> None:
    log = run_dir / "log.csv"
    if not log.is_file():
        return
    from ..pl.training import plot_loss_curves

    import matplotlib.pyplot as plt

    fig = plot_loss_curves(str(log), path=run_dir / "loss_curve.png")
    plt.close(fig)
