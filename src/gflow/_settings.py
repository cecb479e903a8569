"""Experiment settings: the demo's defaults, and the same settings read from a TOML file.

Every section and key is checked: unknown ones, wrong types and bad values raise `ValueError`
naming `[section].key`. The file format is documented in docs/cli.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from typing import Any

import jax

from ._markov import MarkovSpec
from ._model import TransformerConfig

DEMO_PI = (0.75, 0.19, 0.05, 0.01)

_SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    # section -> key -> (accepted types, default)
    "chain": {"kind": (str, "sticky"), "pi": (list, list(DEMO_PI)), "lam": ((int, float), 0.5), "T": (int, 10),
              "positions": (str, "last"), "p": ((int, float), None), "q": ((int, float), None), "V": (int, None),
              "alpha": ((int, float), None), "seed": (int, 0), "P": (list, None), "init": (list, None)},
    "model": {"n_heads": (int, 1), "d_model": (int, 8), "d_head": (int, None), "value": (bool, False),
              "residual": (bool, False), "positional": (str, "none"), "attn_scale": ((int, float), None)},
    "init": {"seed": (int, 0), "scale": ((int, float), 1e-3), "gamma": ((int, float), None)},
    "flow": {"t_end": ((int, float), 1e5), "loss": (str, "meanfield"), "rtol": ((int, float), 1e-6),
             "atol": ((int, float), 1e-9), "n_save": (int, 241), "solver": (str, None), "max_steps": (int, 100_000)},
    "output": {"dir": (str, "gflow-demo")},
}


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
        unknown = set(raw) - set(_SCHEMA)
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; the sections are {list(_SCHEMA)}.")
        out = {}
        for section, keys in _SCHEMA.items():
            given = raw.get(section, {})
            if not isinstance(given, dict):
                raise ValueError(f"{source}: [{section}] must be a table of keys.")
            bad = set(given) - set(keys)
            if bad:
                raise ValueError(f"{source}: unknown key(s) {sorted(bad)} in [{section}]; allowed: {sorted(keys)}.")
            vals = {}
            for k, (types, default) in keys.items():
                v = given.get(k, default)
                accepts_bool = types is bool
                if k in given and (not isinstance(v, types) or (isinstance(v, bool) and not accepts_bool)):
                    names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
                    raise ValueError(f"{source}: [{section}].{k} must be {names}; got {v!r}.")
                vals[k] = v
            out[section] = vals
        if "scale" in raw.get("init", {}) and "gamma" in raw.get("init", {}):
            raise ValueError(f"{source}: give [init].scale or [init].gamma, not both.")
        if "gamma" in raw.get("init", {}):
            out["init"]["scale"] = None
        settings = cls(**out)
        settings.build()  # every value is checked by the constructors it feeds
        return settings

    @classmethod
    def from_toml(cls, path: str) -> ExperimentSettings:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ValueError(f"config file {path!r} does not exist.") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e}).") from None
        return cls.from_dict(raw, source=path)

    def build(self) -> tuple[MarkovSpec, TransformerConfig, dict[str, Any]]:
        """The chain, the config, and the keyword arguments of `init_params` and `simulate`."""
        c = self.chain
        kind = c["kind"]
        try:
            if kind == "sticky":
                spec = MarkovSpec.sticky(c["pi"], c["lam"], c["T"], positions=c["positions"])
            elif kind == "binary":
                spec = MarkovSpec.binary(c["p"], c["q"], c["T"], positions=c["positions"])
            elif kind == "dirichlet":
                spec = MarkovSpec.dirichlet(jax.random.key(c["seed"]), c["V"], c["alpha"], c["T"],
                                            positions=c["positions"])
            elif kind == "matrix":
                spec = MarkovSpec.from_matrix(c["P"], c["T"], init=c["init"], positions=c["positions"])
            else:
                raise ValueError(f"`kind` must be 'sticky', 'binary', 'dirichlet' or 'matrix'; got {kind!r}.")
        except (ValueError, TypeError) as e:
            raise ValueError(f"[chain]: {e}") from None
        try:
            config = TransformerConfig(**self.model)
        except (ValueError, TypeError) as e:
            raise ValueError(f"[model]: {e}") from None
        f = self.flow
        for k in ("t_end", "rtol", "atol"):
            if not (math.isfinite(f[k]) and f[k] > 0):
                raise ValueError(f"[flow].{k} must be a finite number > 0; got {f[k]!r}.")
        for k in ("n_save", "max_steps"):
            if f[k] < 2:
                raise ValueError(f"[flow].{k} must be >= 2; got {f[k]!r}.")
        i = self.init
        if i["scale"] is not None and not (math.isfinite(i["scale"]) and i["scale"] > 0):
            raise ValueError(f"[init].scale must be a finite number > 0; got {i['scale']!r}.")
        run = {"seed": i["seed"], "scale": i["scale"], "gamma": i["gamma"], "t_end": float(f["t_end"]),
               "loss": f["loss"], "rtol": float(f["rtol"]), "atol": float(f["atol"]), "n_save": f["n_save"],
               "solver": f["solver"], "max_steps": f["max_steps"]}
        return spec, config, run
