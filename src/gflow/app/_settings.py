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
when the file is read: unknown ones, keys of another chain kind and wrong types here; values by the
very functions they feed, which build the run's record once (`ExperimentSettings.record`: the data
source, the model, the loss, the solver, the save grid). Bad values and names (loss methods,
solvers) that do not exist or do not fit the problem raise `ValueError` naming `[section].key`.
The file format is documented in docs/cli.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tomllib
from collections.abc import Callable
from typing import Any

from ..common import ArgumentError
from ..data import AbstractDataSource, InContextMarkovSpec, MarkovSpec, SparseLagSpec
from ..flow import flow_record, simulate
from ..losses import METHOD_NAMES
from ..model import TransformerConfig, TransformerParams, check_init_scale, init_params
from ..record import RunRecord

CHAIN_KINDS: dict[str, Callable[..., AbstractDataSource]] = {
    "sticky": MarkovSpec.sticky, "binary": MarkovSpec.binary, "dirichlet": MarkovSpec.dirichlet,
    "matrix": MarkovSpec.from_matrix, "text": MarkovSpec.from_text, "sparse_lag": SparseLagSpec.random,
    "in_context_markov": InContextMarkovSpec,
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
    """One TOML key: accepted types, default (`REQUIRED` if none), the parameter it feeds, and, for
    a key that names one of a fixed set of things, that set (`choices`, owned by the layer it names)."""

    types: type | tuple[type, ...]
    default: Any
    parameter: str
    choices: tuple[str, ...] | None = None


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
    flow["loss"] = dataclasses.replace(flow["loss"], choices=METHOD_NAMES)
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
        if key.choices is not None and v not in key.choices:
            raise ValueError(f"{source}: [{section}].{name} must be one of {key.choices}; got {v!r}.")
        out[name] = v
    return out


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    """All settings of one run, by section (plain dicts of the TOML keys, defaults filled in), and
    the run they describe (`record`), built once when the settings are read: that is what checks
    every value, and what `run_experiment` runs."""

    chain: dict[str, Any]
    model: dict[str, Any]
    init: dict[str, Any]
    flow: dict[str, Any]
    output: dict[str, Any]
    record: RunRecord = dataclasses.field(compare=False, repr=False)

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
        return cls(**out, record=_record_of(out, source))

    @classmethod
    def from_toml(cls, path: str) -> ExperimentSettings:
        """The settings of a TOML file (UTF-8; a byte-order mark is skipped). A relative `[output].dir`
        is relative to the file's folder, not to where gflow runs."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise ValueError(f"config file {path!r} does not exist.") from None
        except IsADirectoryError:
            raise ValueError(f"config file {path!r} is a directory; pass the path of a TOML file.") from None
        except OSError as e:
            raise ValueError(f"config file {path!r} cannot be read ({e.strerror}).") from None
        try:
            text = data.decode("utf-8-sig")  # TOML is UTF-8; editors on some systems add a byte-order mark
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); TOML files "
                             "must be UTF-8: save it again as UTF-8 (in most editors: 'Save with encoding').") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}).") from None
        output = raw.get("output")
        if isinstance(output, dict) and isinstance(output.get("dir"), str) and not os.path.isabs(output["dir"]):
            raw = {**raw, "output": {**output, "dir": os.path.normpath(os.path.join(os.path.dirname(
                os.path.abspath(path)), output["dir"]))}}
        return cls.from_dict(raw, source=path)

    # ------------------------------------------------------------------------------------------
    def build(self) -> tuple[AbstractDataSource, TransformerConfig, dict[str, Any]]:
        """The chain, the config, and a flat dict of the run's values (`seed`, `scale`, `gamma`,
        `t_end` and `simulate`'s keyword arguments), as built when the settings were read (nothing
        is built again)."""
        i, f = self.init, self.flow
        run = {"seed": i["seed"], "scale": i["scale"], "gamma": i["gamma"], "t_end": float(f["t_end"]),
               **{k: v for k, v in f.items() if k != "t_end"}}
        return self.record.source, self.record.config, run

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The settings as nested plain values (unset keys left out): `from_dict` reads it back."""
        return {section: {k: v for k, v in getattr(self, section).items() if v is not None} for section in SCHEMA}

    def initial_params(self) -> TransformerParams:
        """`init_params` with the `[init]` section, for the record's data and model."""
        i = self.init
        return init_params(i["seed"], self.record.config, self.record.source, scale=i["scale"], gamma=i["gamma"])

    def simulate_arguments(self) -> dict[str, Any]:
        """Every `[flow]` key but `t_end`, as `simulate`'s keyword arguments."""
        keys = SCHEMA["flow"]
        return {keys[k].parameter: v for k, v in self.flow.items() if k != "t_end"}

    def record_until(self, t_end: float) -> RunRecord:
        """The record of these settings' flow, ending at `t_end` instead (same data, model, loss and
        solver settings; a save grid of its own)."""
        r = self.record
        args = {k: v for k, v in self.simulate_arguments().items() if k not in ("loss", "n_samples", "key")}
        return flow_record(r.source, r.config, t_span=(0.0, t_end), loss=r.loss, **args)


def _record_of(sections: dict[str, dict[str, Any]], source: str) -> RunRecord:
    """The run the sections describe, each value checked by the function it feeds; a `ValueError`
    names `[section].key`."""
    c = dict(sections["chain"])
    kind = c.pop("kind")
    keys = chain_schema(kind)
    try:
        data = CHAIN_KINDS[kind](**{keys[k].parameter: v for k, v in c.items()})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: [chain]: {e}") from None
    try:
        config = TransformerConfig(**sections["model"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: [model]: {e}") from None
    try:
        check_init_scale(sections["init"]["scale"], sections["init"]["gamma"])
    except ValueError as e:
        raise ValueError(f"{source}: [init]: {e}") from None
    flow = sections["flow"]
    toml_name = {key.parameter: name for name, key in SCHEMA["flow"].items()} | {"t_span": "t_end"}
    try:
        return flow_record(data, config, t_span=(0.0, flow["t_end"]),
                           **{SCHEMA["flow"][k].parameter: v for k, v in flow.items() if k != "t_end"}, stacklevel=6)
    except ArgumentError as e:
        raise ValueError(f"{source}: [flow].{toml_name.get(e.argument, e.argument)}: {e}") from None
