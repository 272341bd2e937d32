"""The public Python API. The command line is a thin layer over these functions.

    from cleantrain import api
    cfg = api.RunConfig(attack="badnets", rate=0.1, defense="abl")
    result = api.train(cfg, out="runs/abl")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .attacks.base import Attack, attack_from_description, make_attack
from .config import as_dict, build, load_yaml
from .data.core import ImageData, PoisonedData
from .data.io import load_dataset, load_npz, save_npz
from .defenses.base import DefenseContext, defense_settings, run_defense, run_detector
from .defenses.shared import reused_cpu_seconds, reused_seconds
from .errors import UserError
from .evaluate.metrics import detection, eval_subset, model_metrics, peak_rss_mb
from .models.base import make_model
from .registry import attacks, datasets, defenses, models
from .store.artifacts import load_model, save_model, write_csv, write_json
from .store.runs import RunStore
from .train import dist
from .train.settings import TrainSettings
from .train.trainer import Trainer, pick_device

RUN_MARKER = "run.json"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run. YAML presets and `--set` fill it."""

    dataset: str = "fashion-mnist"
    data_root: str | None = None  # folder (or file) for datasets that need one
    data: str | None = None  # a poisoned .npz (from `cleantrain poison`) instead of dataset+attack
    attack: str | None = "badnets"  # None = clean data
    attack_opts: dict[str, Any] = field(default_factory=dict)
    rate: float = 0.1
    target: int = 0
    defense: str = "vanilla"
    defense_opts: dict[str, Any] = field(default_factory=dict)
    model: str = "small-cnn"
    train_size: int | None = None
    test_size: int | None = None
    clean_set: int | None = None  # reserved clean samples (held out of the test split); None = auto
    clean_data: str | None = None  # a trusted clean .npz instead
    seed: int = 0
    device: str = "auto"
    train: TrainSettings = field(default_factory=TrainSettings)

    def check(self) -> None:
        for name, v in (("train_size", self.train_size), ("test_size", self.test_size)):
            if v is not None and v < 1:
                raise UserError(f"setting {name!r} must be ≥ 1")
        if self.clean_set is not None and self.clean_set < 0:
            raise UserError("setting 'clean_set' must be ≥ 0")


def make_config(preset: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A RunConfig from a YAML preset, then `key=value` overrides (`train.lr`, `attack.size`, `defense.gamma`)."""
    values: dict[str, Any] = load_yaml(preset) if preset else {}
    for section in ("train", "attack_opts", "defense_opts"):
        if not isinstance(values.get(section) or {}, dict):
            raise UserError(f"setting {section!r} must be a mapping of settings, got {values[section]!r}")
    train_values = dict(values.pop("train", None) or {})
    attack_opts = dict(values.pop("attack_opts", None) or {})
    defense_opts = dict(values.pop("defense_opts", None) or {})
    for key, v in (overrides or {}).items():
        head, _, tail = key.partition(".")
        if key in ("train", "attack_opts", "defense_opts"):
            raise UserError(f"setting {key!r} is a group: set its members ({'train.lr' if key == 'train' else key + '.NAME'}=...)")
        if head == "train" and tail:
            train_values[tail] = v
        elif head == "attack" and tail:
            attack_opts[tail] = v
        elif head == "defense" and tail:
            defense_opts[tail] = v
        else:
            values[key] = v
    ts = build(TrainSettings, train_values, where="train")
    values.update(train=ts, attack_opts=attack_opts, defense_opts=defense_opts)
    if values.get("attack") in ("none", "clean", ""):
        values["attack"] = None
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
    from .config import _coerce
    import typing

    hints = typing.get_type_hints(RunConfig)
    for k in list(values):
        if k not in ("train", "attack_opts", "defense_opts"):
            values[k] = _coerce(values[k], hints[k], k)
    cfg = RunConfig(**values)
    cfg.check()
    return cfg


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["train"] = as_dict(cfg.train)
    return d


# ---------------------------------------------------------------- data stage
@dataclass
class Prepared:
    poisoned: PoisonedData
    test: ImageData
    attack: Attack | None
    target: int
    clean: ImageData | None
    clean_source: str


def _clean_count(cfg: RunConfig, test_n: int) -> int:
    if cfg.clean_set is not None:
        return cfg.clean_set
    return min(2000, max(50, test_n // 5))


def prepare(cfg: RunConfig, need_clean: bool = False) -> Prepared:
    """Load (and poison) the training data, the test split and a reserved clean set."""
    if cfg.data:
        poisoned = load_npz(cfg.data)
        name = poisoned.data.name
        if name in datasets.keys() and name != "npz":
            _, test = load_dataset(name, cfg.data_root)
            if test.shape != poisoned.data.shape or test.num_classes != poisoned.data.num_classes:
                raise UserError(f"{cfg.data}: images do not match dataset {name!r}; cannot evaluate")
        else:
            test = poisoned.data
        rebuilt = attack_from_description(poisoned.attack, poisoned.data.shape, poisoned.data.num_classes)
        attack, target = rebuilt if rebuilt else (None, 0)
        if cfg.train_size:
            poisoned = poisoned.subset(torch.arange(min(cfg.train_size, len(poisoned))))
    else:
        train, test = load_dataset(cfg.dataset, cfg.data_root)
        train = train.head(cfg.train_size, seed=cfg.seed)
        if cfg.attack:
            attack = make_attack(cfg.attack, cfg.attack_opts, train.shape, train.num_classes)
            attack.check_target(cfg.target)
            poisoned = attack.poison(train, cfg.rate, cfg.target, cfg.seed)
            target = cfg.target
        else:
            attack, target = None, 0
            poisoned = PoisonedData.clean(train)
    clean, source = None, "none"
    if cfg.clean_data:
        clean, source = load_npz(cfg.clean_data).data, f"file {cfg.clean_data}"
        if clean.shape != poisoned.data.shape or clean.num_classes != poisoned.data.num_classes:
            raise UserError(f"{cfg.clean_data}: clean data does not match the training images")
    elif need_clean and test is not poisoned.data:
        k = _clean_count(cfg, len(test))
        g = torch.Generator().manual_seed(10_000 + cfg.seed)
        perm = torch.randperm(len(test), generator=g)
        clean, test = test.subset(perm[:k].sort().values), test.subset(perm[k:].sort().values)
        source = f"{k} samples held out of the {test.name or 'dataset'} test split (left out of evaluation)"
    test = test.head(cfg.test_size, seed=cfg.seed)
    if len(torch.unique(poisoned.data.y)) < 2:
        raise UserError(f"the training data holds a single class ({int(poisoned.data.y[0])}); need at least 2")
    return Prepared(poisoned, test, attack, target, clean, source)


# ---------------------------------------------------------------- run folder
def _check_out(out: Path, cfg_d: dict[str, Any], overwrite: bool) -> bool:
    """Validate the output folder; True when an earlier identical run should resume."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise UserError(f"output {str(out)!r} exists and is not a folder")
    marker = out / RUN_MARKER
    if overwrite:
        if marker.is_file() or not any(out.iterdir()):
            shutil.rmtree(out)
            return False
        raise UserError(f"output folder {str(out)!r} is not a cleantrain run; refusing to delete it")
    if not any(out.iterdir()):
        return False
    if not marker.is_file():
        raise UserError(f"output folder {str(out)!r} exists and is not an earlier run (pass --overwrite or pick another)")
    try:
        earlier = json.loads(marker.read_text()).get("config")
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{marker}: unreadable; pass --overwrite")
    if earlier != json.loads(json.dumps(cfg_d, default=str)):
        raise UserError(f"output folder {str(out)!r} holds a run with another config (pass --overwrite)")
    return True


def _store_for(out: Path, db: str | Path | None) -> RunStore:
    return RunStore(db if db else out.parent / "runs.db")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, its commit (+dirty when src/ has uncommitted changes)."""
    import subprocess

    from . import __version__

    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return __version__
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{__version__} {head.stdout.strip()}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def train(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, db: str | Path | None = None,
          progress: bool | None = None, log=print) -> dict[str, Any]:
    """Poison (optionally), defend, evaluate, and write `<out>/result.json` + `model.safetensors`."""
    out = Path(out)
    cfg_d = config_dict(cfg)
    # validate everything that can be validated before any file is written
    spec = defenses.get(cfg.defense)
    dsettings = defense_settings(cfg.defense, cfg.defense_opts)
    models.get(cfg.model)
    if cfg.attack:
        attacks.get(cfg.attack)
    dist.init()  # under torchrun: join the ranks; rank 0 alone checks and writes the folder and the store
    main = dist.is_main()
    log = log if main else None
    resume = dist.broadcast_flag(_check_out(out, cfg_d, overwrite) if main else False)
    if resume and dist.broadcast_flag((out / "result.json").is_file()):
        return json.loads((out / "result.json").read_text())  # finished earlier: never redone
    prep = prepare(cfg, need_clean=getattr(spec, "needs_clean", False))
    shape = prep.poisoned.data.shape
    make_model(cfg.model, shape[0], prep.poisoned.data.num_classes, shape[1])  # fits these images?
    device = pick_device(cfg.device)
    store, run_id = None, 0
    created = not out.exists()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_MARKER, {"config": cfg_d, "started": time.time()})
        store = _store_for(out, db)
        run_id = store.start(out, cfg_d)
    try:
        result = _train(cfg, cfg_d, prep, dsettings, device, out, resume, progress, log)
    except BaseException as e:
        if store is not None:
            store.fail(run_id, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        if main and created and isinstance(e, UserError):  # bad input found late: leave nothing half-written
            shutil.rmtree(out, ignore_errors=True)
        raise
    if store is not None:
        store.finish(run_id, {k: v for k, v in result.items() if k not in ("config", "history")})
    return result


def _train(cfg, cfg_d, prep: Prepared, dsettings, device, out: Path, resume: bool, progress, log) -> dict[str, Any]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = code_version()  # the code this run starts with
    train_data = prep.poisoned.data
    mean, std = train_data.channel_stats()
    test = prep.test.to(device)
    triggered = prep.attack.test_set(test, prep.target) if prep.attack else None

    # per-epoch CA/ASR on a fixed subset (`eval_sample`); the final numbers below on the whole split
    epoch_test, epoch_triggered = eval_subset(test, triggered, cfg.train.eval_sample)

    def evaluator(model):
        return {**model_metrics(trainer, model, epoch_test, prep.attack, prep.target, epoch_triggered),
                "eval_n": len(epoch_test)}

    trainer = Trainer(cfg.train, device, cfg.seed, progress=progress, evaluator=evaluator,
                      checkpoint_dir=out / "checkpoints", resume=resume)
    ctx = DefenseContext(trainer, cfg.model, train_data.shape, train_data.num_classes, mean, std, cfg.seed,
                         clean=prep.clean, clean_source=prep.clean_source,
                         log=lambda m: log(f"[{cfg.defense}] {m}") if log else None)
    reused0, reused_cpu0 = reused_seconds(), reused_cpu_seconds()
    res = run_defense(cfg.defense, train_data, ctx, dsettings)
    metrics = model_metrics(trainer, res.model, test, prep.attack, prep.target, triggered)
    wall = time.perf_counter() - t0 + trainer.carried_seconds  # a resumed run counts its earlier processes
    cpu = time.process_time() - cpu0 + trainer.carried_cpu_seconds
    reused = reused_seconds() - reused0
    result = {
        "clean_acc": metrics["clean_acc"],
        "asr": metrics.get("asr"),
        "robust_acc": metrics.get("robust_acc"),
        "detection": detection(res.flagged, res.scores, prep.poisoned),
        "wall_seconds": round(wall, 3),
        "carried_seconds": round(trainer.carried_seconds, 3),  # of wall_seconds, spent before a resume
        # the run's cost had it computed alone: its wall time plus the shared work it took from the cache
        "reused_seconds": round(reused, 3),
        "cost_seconds": round(wall + reused, 3),
        # the same in CPU time (all threads; carried over resumes): steady when other processes share the cores
        "cpu_seconds": round(cpu, 3),
        "cpu_cost_seconds": round(cpu + reused_cpu_seconds() - reused_cpu0, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": str(device),
        "code": code,
        "n_train": len(train_data),
        "n_test": len(test),
        "poison_counts": prep.poisoned.counts(),
        "clean_source": prep.clean_source if prep.clean is not None else None,
        "defense_info": res.info,
        "config": cfg_d,
        "history": trainer.history,
    }
    if dist.is_main():  # under torchrun every rank holds the same result; rank 0 writes it
        save_model(res.model, out / "model.safetensors", cfg.model, train_data.shape[1], train_data.classes)
        if res.scores is not None or res.flagged is not None:
            write_suspects(out / "suspects.csv", res.scores, res.flagged)
        write_json(out / "result.json", result)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def write_suspects(path: Path, scores: torch.Tensor | None, flagged: torch.Tensor | None) -> Path:
    """`index,score,flagged`, most suspicious first."""
    n = len(scores) if scores is not None else len(flagged)
    s = scores.detach().cpu().double() if scores is not None else flagged.cpu().double()
    f = flagged.cpu().bool() if flagged is not None else torch.zeros(n, dtype=torch.bool)
    order = torch.argsort(-torch.nan_to_num(s, nan=float("-inf")), stable=True)
    rows = [[int(i), f"{float(s[i]):.6g}", int(f[i])] for i in order]
    return write_csv(path, ["index", "score", "flagged"], rows)


# ---------------------------------------------------------------- other verbs
def poison(cfg: RunConfig, out: str | Path, examples: str | Path | None = None, overwrite: bool = False) -> PoisonedData:
    """Poison a registered dataset and save it as one `.npz` (no attack: the clean set, in the same format)."""
    if examples and not cfg.attack:
        raise UserError("--examples needs --attack (clean data has no triggered images to show)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists (pass --overwrite)")
    prep = prepare(cfg)
    save_npz(prep.poisoned, out)
    if examples:
        from .report.gallery import write_examples

        write_examples(prep.test, prep.attack, Path(examples), target=prep.target, seed=cfg.seed)
    return prep.poisoned


def evaluate(model_path: str | Path, cfg: RunConfig, allow_pickle_weights: bool = False) -> dict[str, Any]:
    """CA (and ASR/RA when an attack is named) of a saved model on a dataset's test split."""
    model, info = load_model(model_path, allow_pickle_weights)
    prep = prepare(cfg)
    test = prep.test
    if test.shape[0] != info["in_channels"] or test.shape[1] != info["image_size"] or test.num_classes != info["num_classes"]:
        raise UserError(f"{model_path}: model is for {info['in_channels']}×{info['image_size']} px, "
                        f"{info['num_classes']} classes; the data does not match")
    trainer = Trainer(cfg.train, pick_device(cfg.device), cfg.seed, progress=False)
    return model_metrics(trainer, model, test.to(trainer.device), prep.attack, prep.target)


def predict(model_path: str | Path, data_path: str | Path, out: str | Path,
            allow_pickle_weights: bool = False, device: str = "auto") -> Path:
    model, info = load_model(model_path, allow_pickle_weights)
    data = load_npz(data_path, need_labels=False).data
    if data.shape[0] != info["in_channels"] or data.shape[1] != info["image_size"]:
        raise UserError(f"{data_path}: images {data.shape} do not fit the model ({info['in_channels']}×{info['image_size']} px)")
    trainer = Trainer(TrainSettings(), pick_device(device), progress=False)
    probs = torch.softmax(trainer.logits(model, data), 1).cpu()
    conf, pred = probs.max(1)
    classes = info["classes"]
    rows = [[i, int(p), classes[int(p)] if int(p) < len(classes) else str(int(p)), f"{float(c):.6f}"]
            for i, (p, c) in enumerate(zip(pred, conf))]
    if not dist.is_main():  # under torchrun every rank holds the predictions; rank 0 writes them
        return Path(out)
    return write_csv(out, ["index", "pred", "class", "confidence"], rows)


def detect(detector: str, cfg: RunConfig, out: str | Path, overwrite: bool = False,
           progress: bool | None = None) -> dict[str, Any]:
    """Rank the training samples by suspicion and write `index,score,flagged` CSV."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists (pass --overwrite)")
    spec = defenses.get(detector)
    if spec.detect is None:
        valid = [k for k in defenses.keys() if defenses.get(k).detect is not None]
        raise UserError(f"{detector!r} is not a detector; valid: {', '.join(valid) or 'none yet'}")
    dsettings = defense_settings(detector, cfg.defense_opts)
    prep = prepare(cfg, need_clean=getattr(spec, "needs_clean", False))
    data = prep.poisoned.data
    mean, std = data.channel_stats()
    trainer = Trainer(cfg.train, pick_device(cfg.device), cfg.seed, progress=progress)
    ctx = DefenseContext(trainer, cfg.model, data.shape, data.num_classes, mean, std, cfg.seed,
                         clean=prep.clean, clean_source=prep.clean_source)
    t0 = time.perf_counter()
    det = run_detector(detector, data, ctx, dsettings)
    if dist.is_main():
        write_suspects(out, det.scores, det.flagged)
    return {"detector": detector, "n": len(data), "n_flagged": int(det.flagged.sum()),
            "detection": detection(det.flagged, det.scores, prep.poisoned),
            "wall_seconds": round(time.perf_counter() - t0, 3), "out": str(out),
            "clean_source": prep.clean_source if prep.clean is not None else None, "info": det.info}


def _registry(kind: str):
    reg = {"datasets": datasets, "attacks": attacks, "models": models, "defenses": defenses}.get(kind)
    if reg is None:
        raise UserError(f"unknown kind {kind!r}; valid: attacks, datasets, defenses, models")
    return reg


def list_entries(kind: str) -> list[tuple[str, str]]:
    return [(e.key, e.doc) for e in _registry(kind).entries()]


def entry_settings(kind: str, key: str) -> tuple[str, list[tuple[str, str, Any]]]:
    """One entry's first doc line and its settings: (name, type, default) for each field of its settings
    dataclass (none when it takes no settings)."""
    e = _registry(kind).entry(key)
    rows = []
    for f in dataclasses.fields(e.settings) if e.settings is not None else ():
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((f.name, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)),
                     default))
    return e.doc, rows


# ---------------------------------------------------------------- bench and report
def bench(grid: str | Path, out: str | Path, jobs: int = 1, progress: bool | None = None, log=print) -> dict[str, Any]:
    """Run a benchmark grid (YAML) into `out`, resumably; writes `out/table.md` and `out/table.csv`."""
    from .bench import load_grid, run_grid

    return run_grid(load_grid(grid), out, jobs=jobs, progress=progress, log=log)


def report(path: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page for a run folder or a bench folder (default `<path>/report.html`)."""
    from .report.html import write_report

    return write_report(Path(path), Path(out) if out else None)


# ---------------------------------------------------------------- trigger-inversion scan
def scan(model_path: str | Path, cfg: RunConfig, out_dir: str | Path | None = None, *, images: int | None = None,
         steps: int | None = None, bounds: list[float] | None = None, labels: list[int] | None = None,
         allow_pickle_weights: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Neural-Cleanse-style trigger inversion on clean test images: per mask-size bound, the best
    flip rate (REASR) and its label; writes `scan.json` and trigger PNGs into `out_dir` when given."""
    import sys

    from .evaluate.scan import ScanSettings, save_pngs, scan as run_scan

    opts = {k: v for k, v in (("images", images), ("steps", steps), ("bounds", bounds), ("labels", labels),
                              ("seed", cfg.seed)) if v is not None}
    settings = build(ScanSettings, opts, where="scan")
    model, info = load_model(model_path, allow_pickle_weights)
    prep = prepare(dataclasses.replace(cfg, attack=None, attack_opts={}))
    clean = prep.test
    if clean.shape[0] != info["in_channels"] or clean.shape[1] != info["image_size"] or clean.num_classes != info["num_classes"]:
        raise UserError(f"{model_path}: model is for {info['in_channels']}×{info['image_size']} px, "
                        f"{info['num_classes']} classes; the data does not match")
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    t0 = time.perf_counter()
    res = run_scan(model, clean, settings, device=device,
                   progress=progress if progress is not None else sys.stderr.isatty())
    result = {"model": str(model_path), "dataset": clean.name, "classes": list(clean.classes), **res.to_dict(),
              "settings": as_dict(settings), "wall_seconds": round(time.perf_counter() - t0, 3)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        result["pngs"] = [str(p) for p in save_pngs(res, out_dir)]
        write_json(out_dir / "scan.json", result)
    return result
