"""Experiment settings: the demo's defaults, and the same settings read from a TOML file.

The schema is not written by hand: each section is generated from the function it feeds, so a
keyword added there is a key here, with the same default.

- `[chain]`: `kind` picks a data-source constructor (`CHAIN_KINDS`); its keys are that
  constructor's parameters (`key` is spelled `seed`).
- `[model]`: the fields of `TransformerConfig`.
- `[init]`: `init_params`'s `seed` (its `key`), `scale`, `gamma`.
- `[flow]`: `t_end` and `simulate`'s keyword arguments that a file can hold (`key` is spelled
  `sample_seed`); `simulate_arguments()` hands all of them on, so none can be dropped.
- `[output]`: `dir`.

Only the demo's own choices (`DEMO`) differ from those defaults. Every section and key is checked
when the file is read: unknown ones, keys of another chain kind, wrong types, bad values, and names
(loss methods, solvers) that do not exist or do not fit the problem raise `ValueError` naming
`[section].key`. The file format is documented in docs/cli.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
from collections.abc import Callable
from typing import Any

from .._checks import is_real
from .._flow import simulate
from .._model import TransformerConfig, init_params
from ..data import AbstractDataSource, MarkovSpec, SparseLagSpec
from ..losses import METHOD_NAMES, loss_spec
from ..solvers import check_solver_name

CHAIN_KINDS: dict[str, Callable[..., AbstractDataSource]] = {
    "sticky": MarkovSpec.sticky, "binary": MarkovSpec.binary, "dirichlet": MarkovSpec.dirichlet,
    "matrix": MarkovSpec.from_matrix, "text": MarkovSpec.from_text, "sparse_lag": SparseLagSpec.random,
}
"""`[chain].kind` -> the constructor it calls (a new kind is one row)."""

DEMO_PI = (0.75, 0.19, 0.05, 0.01)
DEMO: dict[str, dict[str, Any]] = {
    "chain": {"kind": "sticky", "pi": list(DEMO_PI), "lam": 0.5, "T": 10},
    "init": {"scale": 1e-3},
    "flow": {"t_end": 1e5, "loss": "meanfield"},
    "output": {"dir": "gflow-demo"},
}
"""The focus-dilution setting: where the demo departs from the functions' own defaults."""

RENAMED = {"chain": {"key": "seed"}, "init": {"key": "seed"}, "flow": {"key": "sample_seed"}}
"""Parameters whose TOML name differs (PRNG keys are given as integer seeds)."""

_NOT_IN_FILES = {"params0", "markov_spec", "t_span", "config", "dataset", "save_times", "progress", "checkpoint",
                 "spec", "cls"}
_NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class Key:
    """One TOML key: accepted types, default (`REQUIRED` if none), and the parameter it feeds."""

    types: type | tuple[type, ...]
    default: Any
    parameter: str


REQUIRED = object()


def _toml_types(annotation: Any) -> type | tuple[type, ...]:
    text = str(annotation)
    for name, types in (("bool", bool), ("float", _NUMBER), ("int", int), ("str", str)):
        if text.split(" | ")[0] in (name, f"<class '{name}'>"):
            return types
    return str if "PRNGKey" in text else list


def _keys_of(fn: Callable, section: str, demo: dict[str, Any] | None = None) -> dict[str, Key]:
    """The keys of `section` fed to `fn`: its parameters, with the demo's values (`demo`, default
    `DEMO[section]`) as defaults where it has them."""
    demo = DEMO.get(section, {}) if demo is None else demo
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in _NOT_IN_FILES:
            continue
        toml_name = RENAMED.get(section, {}).get(name, name)
        types = int if toml_name != name else _toml_types(p.annotation)
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        out[toml_name] = Key(types, demo.get(toml_name, default), name)
    return out


def _schema() -> dict[str, dict[str, Key]]:
    model = {f.name: Key(_toml_types(f.type), f.default, f.name) for f in dataclasses.fields(TransformerConfig)}
    init = _keys_of(init_params, "init")
    init["seed"] = dataclasses.replace(init["seed"], default=0)
    flow = {"t_end": Key(_NUMBER, DEMO["flow"]["t_end"], "t_end")} | _keys_of(simulate, "flow")
    flow["solver"] = dataclasses.replace(flow["solver"], types=str)
    return {"chain": {}, "model": model, "init": init, "flow": flow, "output": {"dir": Key(str, "gflow-demo", "dir")}}


def chain_schema(kind: str) -> dict[str, Key]:
    """The keys of `[chain]` for one kind: its constructor's parameters (`seed` for `key`)."""
    fn = CHAIN_KINDS[kind]
    params = inspect.signature(fn).parameters
    # another kind takes the demo's values only where its constructor has no default of its own (T)
    demo = DEMO["chain"] if kind == DEMO["chain"]["kind"] else {
        k: v for k, v in DEMO["chain"].items() if k in params and params[k].default is inspect.Parameter.empty}
    keys = {"kind": Key(str, "sticky", "kind")} | _keys_of(fn, "chain", demo)
    if "seed" in keys:
        keys["seed"] = dataclasses.replace(keys["seed"], default=0)
    return keys


SCHEMA = _schema()


def _read_section(raw: dict, section: str, keys: dict[str, Key], source: str, extra: str = "") -> dict[str, Any]:
    given = raw.get(section, {})
    if not isinstance(given, dict):
        raise ValueError(f"{source}: [{section}] must be a table of keys.")
    bad = set(given) - set(keys)
    if bad:
        raise ValueError(f"{source}: unknown key(s) {sorted(bad)} in [{section}]{extra}; allowed: {sorted(keys)}.")
    out = {}
    for name, key in keys.items():
        if name not in given:
            if key.default is REQUIRED:
                raise ValueError(f"{source}: [{section}].{name} is required{extra}.")
            out[name] = key.default
            continue
        v = given[name]
        if not isinstance(v, key.types) or (isinstance(v, bool) and key.types is not bool):
            names = " or ".join(t.__name__ for t in (key.types if isinstance(key.types, tuple) else (key.types,)))
            raise ValueError(f"{source}: [{section}].{name} must be {names}; got {v!r}.")
        out[name] = v
    return out


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    """All settings of one run, by section (plain dicts of the TOML keys, defaults filled in)."""

    chain: dict[str, Any]
    model: dict[str, Any]
    init: dict[str, Any]
    flow: dict[str, Any]
    output: dict[str, Any]

    @classmethod
    def demo(cls) -> ExperimentSettings:
        """The focus–dilution default: sticky chain with pi = (0.75, 0.19, 0.05, 0.01), lam = 0.5,
        attention-only model with d_model = 8, scale-1e-3 initialisation, mean-field loss, t to 1e5."""
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "settings") -> ExperimentSettings:
        unknown = set(raw) - set(SCHEMA)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; the sections are {list(SCHEMA)}.")
        chain = raw.get("chain", {})
        kind = chain.get("kind", DEMO["chain"]["kind"]) if isinstance(chain, dict) else DEMO["chain"]["kind"]
        if not isinstance(kind, str) or kind not in CHAIN_KINDS:
            raise ValueError(f"{source}: [chain].kind must be one of {tuple(CHAIN_KINDS)}; got {kind!r} (`kind`).")
        out = {"chain": _read_section(raw, "chain", chain_schema(kind), source, f" for kind = {kind!r}")}
        for section in ("model", "init", "flow", "output"):
            out[section] = _read_section(raw, section, SCHEMA[section], source)
        init = raw.get("init", {})
        if "scale" in init and "gamma" in init:
            raise ValueError(f"{source}: give [init].scale or [init].gamma, not both.")
        if "gamma" in init:
            out["init"]["scale"] = None
        settings = cls(**out)
        settings.build(source)  # every value is checked by the constructors it feeds
        return settings

    @classmethod
    def from_toml(cls, path: str) -> ExperimentSettings:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ValueError(f"config file {path!r} does not exist.") from None
        except IsADirectoryError:
            raise ValueError(f"config file {path!r} is a directory; pass the path of a TOML file.") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}).") from None
        return cls.from_dict(raw, source=path)

    # ------------------------------------------------------------------------------------------
    def build(self, source: str = "settings") -> tuple[AbstractDataSource, TransformerConfig, dict[str, Any]]:
        """The chain, the config, and a flat dict of the run's values (`seed`, `scale`, `gamma`,
        `t_end` and `simulate`'s keyword arguments). Raises `ValueError` naming `[section].key`."""
        c = dict(self.chain)
        kind = c.pop("kind")
        keys = chain_schema(kind)
        try:
            spec = CHAIN_KINDS[kind](**{keys[k].parameter: v for k, v in c.items()})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: [chain]: {e}") from None
        try:
            config = TransformerConfig(**self.model)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: [model]: {e}") from None
        f = self.flow
        for k in ("t_end", "rtol", "atol"):
            if not (math.isfinite(f[k]) and f[k] > 0):
                raise ValueError(f"{source}: [flow].{k} must be a finite number > 0; got {f[k]!r}.")
        for k, least in (("n_save", 2), ("max_steps", 1), ("chunk_size", 1), ("n_samples", 1)):
            if f[k] is not None and f[k] < least:
                raise ValueError(f"{source}: [flow].{k} must be >= {least}; got {f[k]!r}.")
        if f["loss"] not in METHOD_NAMES:
            raise ValueError(f"{source}: [flow].loss must be one of {METHOD_NAMES}; got {f['loss']!r}.")
        if f["solver"] is not None:
            try:
                check_solver_name(f["solver"])
            except ValueError as e:
                raise ValueError(f"{source}: [flow].solver: {e}") from None
        try:
            loss_spec(spec, config, f["loss"], n_samples=f["n_samples"], key=f["sample_seed"], stacklevel=4)
        except ValueError as e:
            raise ValueError(f"{source}: [flow].loss: {e}") from None
        i = self.init
        if i["scale"] is not None and not (is_real(i["scale"]) and math.isfinite(i["scale"]) and i["scale"] > 0):
            raise ValueError(f"{source}: [init].scale must be a finite number > 0; got {i['scale']!r}.")
        if i["gamma"] is not None and not math.isfinite(i["gamma"]):
            raise ValueError(f"{source}: [init].gamma must be a finite number; got {i['gamma']!r}.")
        run = {"seed": i["seed"], "scale": i["scale"], "gamma": i["gamma"], "t_end": float(f["t_end"]),
               **{k: v for k, v in f.items() if k != "t_end"}}
        return spec, config, run

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The settings as nested plain values (unset keys left out): `from_dict` reads it back."""
        return {section: {k: v for k, v in getattr(self, section).items() if v is not None} for section in SCHEMA}

    def initial_params(self, spec: AbstractDataSource, config: TransformerConfig):
        """`init_params` with the `[init]` section."""
        i = self.init
        return init_params(i["seed"], config, spec, scale=i["scale"], gamma=i["gamma"])

    def simulate_arguments(self) -> dict[str, Any]:
        """Every `[flow]` key but `t_end`, as `simulate`'s keyword arguments."""
        keys = SCHEMA["flow"]
        return {keys[k].parameter: v for k, v in self.flow.items() if k != "t_end"}
