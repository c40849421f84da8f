"""The grid file of a sweep: parsing, validation and the cells it expands into.

A grid file is a run config (the keys of ``editscale run``) with a ``grid:`` mapping whose values are lists;
every combination is one cell, an ordinary run directory ``out_dir/CELL`` with its own store and checkpoints::

    model: testbed:demo
    data: testbed:demo
    edits: 100
    forget_every: 10
    grid:
      method: [rome, memit]           # or {name: memit, hparams: {...}} entries
      seed: [0, 1, 2, 3]
      method.hparams.layer: [0, 1]    # a dotted key reaches inside a field
    # or a list of such mappings: the union of their cells (grid: [{method: [rome, memit]},
    #                                                            {method: [rome], guard.revert: [true]}])
    sweep:                            # optional: how the cells run
      gpus: 0                         # GPUs per cell (default: 1 where the cell's device is cuda, else 0)
      retries: 2                      # a cell that crashes is retried from its last checkpoint

Every cell is validated exactly as ``editscale run`` validates a config, before anything runs; a bad grid key or
value is a one-line ``ConfigError``. A cell without ``threads`` gets ``threads: 1``: a cell asks its scheduler
for as many CPUs as it has threads, and its run uses that many (not all cores each).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from editscale.errors import ConfigError, config_error
from editscale.experiment.config import RunConfig, _Strict, parse_config, read_yaml
from editscale.experiment.rundir import config_hash

GROUP_OUT = ("seed",)  # grid keys a report averages over (the rest name a group: a method, a model, ...)


class SweepOptions(_Strict):
    """How the cells of a sweep run (the grid file's ``sweep:`` mapping)."""

    gpus: float | None = Field(None, ge=0)  # per cell; None: 1 where the cell's device is cuda, else 0
    retries: int = Field(2, ge=0)  # a crashed cell is retried (from its last checkpoint) this many times


@dataclass(frozen=True)
class Cell:
    """One combination of the grid's values: a run config and the run directory's name."""

    name: str
    values: dict[str, Any]  # grid key -> this cell's value
    config: RunConfig
    group: str  # the cell's values other than the seed: what a report averages seeds within

    @property
    def threads(self) -> int:
        return self.config.threads or 1

    def gpus(self, options: SweepOptions) -> float:
        if options.gpus is not None:
            return options.gpus
        return 1.0 if (self.config.device or "").startswith("cuda") or self.config.device_map else 0.0

    def manifest(self) -> dict[str, Any]:
        cfg = self.config.to_dict()
        return {"name": self.name, "group": self.group, "values": self.values, "config": cfg,
                "config_sha256": config_hash(cfg)}


@dataclass(frozen=True)
class Grid:
    source: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]]  # a list: several grids, their cells' union
    options: SweepOptions
    cells: list[Cell]


# --- the grid file ------------------------------------------------------------------------------------------
def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)[:60]


def _slug(value: Any) -> str:
    """A short, file-name-safe text for a grid value; a hash of it where the text would lose information."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):  # a method entry
        rest = {k: v for k, v in value.items() if k != "name"}
        named = _slug(value["name"])
        return named if not any(rest.values()) else f"{named}-{_digest(rest)}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-.")
    if not slug or len(slug) > 40 or isinstance(value, dict | list) or slug != text:
        slug = (slug[:24].strip("-.") + "-" if slug else "") + _digest(value)
    return slug


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _set_path(cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
    """``cfg[a][b][c] = value`` for the key ``a.b.c`` (a method given by name becomes ``{name: ...}``)."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif isinstance(child, str) and part == "method" and i == 0:
            child = {"name": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"{source} grid key {key!r}: {'.'.join(parts[:i + 1])} is {_short(child)}, "
                              "not a mapping a dotted key can reach into")
        else:
            child = dict(child)
        node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _check_grid(grid: Any, base: dict[str, Any], source: str) -> dict[str, list[Any]]:
    if grid is None:
        raise ConfigError(f"{source} has no 'grid:' mapping of run config keys to lists of values (a single run "
                          "is `editscale run CONFIG`)")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source} field 'grid' must map run config keys to lists of values, e.g. "
                          "'grid: {method: [rome, memit], seed: [0, 1]}'")
    fields = list(RunConfig.model_fields)
    for key, values in grid.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{source} grid key {key!r} is not a run config key")
        top = key.split(".")[0]
        if top not in RunConfig.model_fields:
            raise ConfigError(f"{source} grid key {key!r}: {top!r} is not a run config field; known: "
                              f"{', '.join(fields)}")
        if top == key and key in base:
            raise ConfigError(f"{source} grid key {key!r} is also set outside 'grid:'; keep one of the two")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source} grid key {key!r} must be a non-empty list of values (got {_short(values)})")
        seen = set()
        for v in values:
            text = json.dumps(v, sort_keys=True, default=str)
            if text in seen:
                raise ConfigError(f"{source} grid key {key!r} lists {_short(v)} twice")
            seen.add(text)
    keys = list(grid)
    for a, b in itertools.permutations(keys, 2):
        if b.startswith(a + "."):
            raise ConfigError(f"{source} grid keys {a!r} and {b!r} overlap; grid one of them")
    return {k: list(v) for k, v in grid.items()}


def _names(keys: list[str], combos: list[tuple[Any, ...]]) -> tuple[list[str], list[str]]:
    """Directory names and group labels of the cells: ``rome_seed-0``; the method key shows its value alone."""
    def method_name(value: Any) -> Any:
        return value.get("name") if isinstance(value, dict) else value

    methods = [method_name(c[keys.index("method")]) for c in combos] if "method" in keys else []
    by_name = len(set(methods)) == len({json.dumps(c[keys.index("method")], sort_keys=True) for c in combos}) \
        if methods else False  # each method once: its name alone says which

    def part(key: str, value: Any) -> str:
        if key == "method":
            return _slug(method_name(value) if by_name else value)
        return f"{key.split('.')[-1]}-{_slug(value)}"

    names, groups = [], []
    for combo in combos:
        parts = [part(k, v) for k, v in zip(keys, combo)]
        names.append("_".join(parts))
        groups.append("_".join(p for k, p in zip(keys, parts) if k not in GROUP_OUT) or "all")
    for name in {n for n in names if names.count(n) > 1}:  # two values with the same text: add a hash
        for i, n in enumerate(names):
            if n == name:
                names[i] = f"{n}_{_digest(list(combos[i]))}"
    return names, groups


def parse_grid(data: Any, source: str = "grid file") -> Grid:
    """Validate a grid file's mapping and expand it into cells; ``ConfigError`` (one line) on the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping: a run config with a 'grid:' of lists")
    base = dict(data)
    raw = base.pop("grid", None)
    if isinstance(raw, list) and not raw:
        raise ConfigError(f"{source} field 'grid' is an empty list; give a mapping, or a list of mappings")
    grids = [_check_grid(sub, base, source) for sub in (raw if isinstance(raw, list) else [raw])]
    try:
        options = SweepOptions.model_validate(base.pop("sweep", None) or {})
    except ValidationError as e:
        raise config_error(f"{source} sweep", e) from None
    cells: list[Cell] = []
    for grid in grids:  # a list of grids: the union of their cells
        keys = list(grid)
        combos = list(itertools.product(*(grid[k] for k in keys)))
        names, groups = _names(keys, combos)
        for name, group, combo in zip(names, groups, combos):
            if any(c.name == name for c in cells):
                raise ConfigError(f"{source}: two grids make the cell {name!r}; give each cell once")
            cfg = copy.deepcopy(base)
            for key, value in zip(keys, combo):
                _set_path(cfg, key, value, source)
            cfg.setdefault("threads", 1)
            cells.append(Cell(name, dict(zip(keys, combo)), parse_config(cfg, source=f"{source} cell {name}"),
                              group))
    return Grid(source, base, grids if isinstance(raw, list) else grids[0], options, cells)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a YAML grid file."""
    return parse_grid(read_yaml(path, "grid file"), source=str(Path(path)))


# --- the sweep directory ------------------------------------------------------------------------------------
