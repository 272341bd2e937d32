"""A benchmark grid: attacks × rates × defenses × seeds, read from one YAML file.

    name: core
    dataset: fashion-mnist
    model: small-cnn
    train_size: 10000          # subset of the training split (null = all)
    test_size: null
    target: 0
    seeds: [0]
    rates: [0.1, 0.01]
    train: {epochs: 10}        # TrainSettings for every run
    attacks: [badnets, {key: blend, opts: {alpha: 0.2}}, {key: tact, rates: [0.01]}]
    defenses:
      - vanilla
      - abl
      - {key: ss, rates: [0.01]}                    # only at these rates
      - {key: abl, name: abl-frozen, opts: {unlearn_bn: frozen}}
    defense_opts: {abl: {isolation_epochs: 5}}      # per defense key, every entry of that key
    clean_set: null                                 # reserved clean samples (defenses that need one)

A defense entry may also carry `train:` (TrainSettings overrides), `set:`
(any other run setting, dotted keys as on the command line) and `preset:`
(a YAML file of `train:` / `defense_opts:` / other settings such as the
ones in `configs/`, resolved beside the grid file, from the working folder,
or in the package's `presets/`; its dataset / model / defense keys are
ignored, since the grid decides what runs on what). Precedence, lowest
first: the grid's settings, `defense_opts`, the preset, the entry's own
`opts` / `train` / `set`. Every cell becomes a `RunConfig`, validated
before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_yaml
from ..errors import UserError

GRID_KEYS = {"name", "dataset", "data_root", "model", "train_size", "test_size", "target", "seeds", "rates",
             "train", "attacks", "defenses", "defense_opts", "clean_set", "device"}
ENTRY_KEYS = {"key", "name", "opts", "rates", "train", "set", "preset"}
ATTACK_KEYS = {"key", "name", "opts", "rates"}  # an attack entry sets the poison, not the run
PRESETS = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
class Entry:
    key: str
    name: str
    opts: dict[str, Any] = field(default_factory=dict)
    rates: tuple[float, ...] | None = None  # None = every rate
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted run settings


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    attack: str  # attack entry name
    rate: float
    defense: str  # defense entry name
    seed: int
    overrides: dict[str, Any]  # dotted settings for `make_config`, without `data`

    @property
    def id(self) -> str:
        return f"{self.attack}-{rate_label(self.rate)}-{self.defense}-s{self.seed}"

    @property
    def data_id(self) -> str:
        """The poisoned set this cell trains on (shared by every defense)."""
        return f"{self.attack}-{rate_label(self.rate)}-s{self.seed}"


@dataclass(frozen=True)
class Grid:
    name: str
    cells: tuple[Cell, ...]
    poison: dict[str, dict[str, Any]]  # data_id -> dotted settings for `api.poison`
    source: str = ""


def rate_label(rate: float) -> str:
    """0.1 -> '10pct', 0.005 -> '0.5pct'."""
    return f"{rate * 100:g}pct"


def _entry(raw: Any, what: str, base: Path | None) -> Entry:
    if isinstance(raw, str):
        return Entry(raw, raw)
    if not isinstance(raw, dict) or "key" not in raw:
        raise UserError(f"grid: each {what} is a key or a mapping with 'key', got {raw!r}")
    valid = ATTACK_KEYS if what == "attack" else ENTRY_KEYS
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise UserError(f"grid: {what} {raw['key']!r}: unknown field {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
    key = str(raw["key"])
    overrides: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    if raw.get("preset"):
        preset = _preset(raw["preset"], base)
        opts.update(preset.pop("opts", {}))
        overrides.update(preset)
    opts.update(_mapping(raw.get("opts"), f"{what} {key!r} opts"))
    overrides.update({f"train.{k}": v for k, v in _mapping(raw.get("train"), f"{what} {key!r} train").items()})
    overrides.update(_mapping(raw.get("set"), f"{what} {key!r} set"))
    rates = raw.get("rates")
    if rates is not None:
        rates = tuple(_rates(rates))
    return Entry(key, str(raw.get("name") or key), opts, rates, overrides)


def _preset(name: str, base: Path | None) -> dict[str, Any]:
    """A preset file as {'opts': defense options, dotted overrides...}."""
    candidates = [Path(name)]
    if base is not None:
        candidates.insert(0, base / name)
    candidates.append(PRESETS / name)
    candidates.append(PRESETS / f"{name}.yaml")
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"grid: preset {name!r} not found (looked beside the grid and in {PRESETS})")
    out: dict[str, Any] = {"opts": {}}
    for k, v in load_yaml(path).items():
        if k == "defense_opts":
            out["opts"].update(_mapping(v, f"preset {name}"))
        elif k in ("train", "attack_opts") and isinstance(v, dict):
            prefix = "train" if k == "train" else "attack"
            out.update({f"{prefix}.{kk}": vv for kk, vv in v.items()})
        elif k not in ("dataset", "model", "defense", "attack", "rate", "target", "seed", "data"):
            out[k] = v  # the grid, not the preset, decides what runs on what
    return out


def _at(rate: float, rates: tuple[float, ...] | None) -> bool:
    return rates is None or any(abs(rate - r) < 1e-12 for r in rates)


def _mapping(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise UserError(f"grid: {what} must be a mapping, got {v!r}")
    return dict(v)


def _rates(v: Any) -> list[float]:
    items = v if isinstance(v, list) else [v]
    out = []
    for r in items:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise UserError(f"grid: rates must be numbers in (0, 1), got {r!r}")
        out.append(float(r))
    return out


def _list(v: Any, what: str) -> list[Any]:
    if v is None:
        raise UserError(f"grid: {what!r} is required")
    items = v if isinstance(v, list) else [v]
    if not items:
        raise UserError(f"grid: {what!r} is empty")
    return items


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    raw = load_yaml(path)
    return parse_grid(raw, path.parent, name=str(raw.get("name") or path.stem), source=str(path))


def parse_grid(raw: dict[str, Any], base: Path | None = None, name: str = "grid", source: str = "") -> Grid:
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise UserError(f"grid: unknown field {unknown[0]!r}; valid: {', '.join(sorted(GRID_KEYS))}")
    attacks = [_entry(a, "attack", base) for a in _list(raw.get("attacks"), "attacks")]
    defenses = [_entry(d, "defense", base) for d in _list(raw.get("defenses"), "defenses")]
    rates = _rates(_list(raw.get("rates"), "rates"))
    seeds = _list(raw.get("seeds", [0]), "seeds")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise UserError(f"grid: seeds must be integers, got {seeds!r}")
    per_key = _mapping(raw.get("defense_opts"), "defense_opts")
    for names, what in (([a.name for a in attacks], "attack"), ([d.name for d in defenses], "defense")):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"grid: {what} name {dup[0]!r} appears twice; give one entry a 'name'")
    common: dict[str, Any] = {}
    for k in ("dataset", "data_root", "model", "test_size", "target", "clean_set", "device"):
        if raw.get(k) is not None:
            common[k] = raw[k]
    common.update({f"train.{k}": v for k, v in _mapping(raw.get("train"), "train").items()})
    cells: list[Cell] = []
    poison: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for rate in rates:
            for att in attacks:
                if not _at(rate, att.rates):
                    continue
                for d in defenses:
                    if not _at(rate, d.rates):
                        continue
                    opts = {**_mapping(per_key.get(d.key), f"defense_opts.{d.key}"), **d.opts}
                    ov = {**common, "attack": att.key, "rate": rate, "seed": seed, "defense": d.key,
                          **{f"attack.{k}": v for k, v in att.opts.items()},
                          **{f"defense.{k}": v for k, v in opts.items()}, **d.overrides}
                    cell = Cell(att.name, rate, d.name, seed, ov)
                    cells.append(cell)
                    poison.setdefault(cell.data_id, {
                        k: v for k, v in {**common, **{f"attack.{k}": v for k, v in att.opts.items()},
                                          "attack": att.key, "rate": rate, "seed": seed,
                                          "train_size": raw.get("train_size")}.items()
                        if not k.startswith("train.") and k not in ("clean_set", "device")})
    if not cells:
        raise UserError("grid: no cells (check the attacks' and defenses' 'rates')")
    # vanilla first within each poisoned set, so DER has its reference early
    first: dict[str, int] = {}
    for i, c in enumerate(cells):
        first.setdefault(c.data_id, i)
    cells.sort(key=lambda c: (first[c.data_id], c.overrides["defense"] != "vanilla"))
    return Grid(name, tuple(cells), poison, source)


def validate(grid: Grid) -> None:
    """Build every cell's RunConfig and defense settings; a bad key fails here, before any run."""
    from ..api import make_config
    from ..defenses.base import defense_settings
    from ..registry import attacks

    for cell in grid.cells:
        cfg = make_config(None, cell.overrides)
        defense_settings(cfg.defense, cfg.defense_opts)
        if cfg.attack:
            attacks.get(cfg.attack)
