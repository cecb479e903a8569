"""The architecture of the one-layer Transformer (`TransformerConfig`).

Its fields are the `[model]` keys of settings files and the `config` of trajectory files: both are
derived from the dataclass fields (`to_dict`, the settings schema), so a new field is one line here.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import numpy as np

LAYERNORMS = ("none", "pre")
ACTIVATIONS = ("gelu", "relu")


def _plain_number(value):
    """numpy's booleans, integers and floats (a loop over `np.arange`, a value read from an array) as Python's:
    these fields are static, part of every compiled program's key, and must be plain numbers. Other
    values are left as they are for the checks to name."""
    if isinstance(value, jax.Array) and value.ndim == 0 and not isinstance(value, jax.core.Tracer):
        value = np.asarray(value)[()]  # a concrete 0-d JAX array, as the numpy scalar it holds
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class TransformerConfig(eqx.Module):
    """Architecture of the one-layer Transformer.

    The default is the attention-only model of the focus–dilution setting (Chen et al., ICML 2026):
    one head, no value path (`v_s = h_s`), no residual stream, no positional encoding. The other
    fields turn it into the full block of a nanoGPT-style Transformer (pre-LayerNorm, MLP, tied
    embeddings, unembedding bias), as Makkuva et al. (ICLR 2025) and Yüksel et al. (2026) train it.

    **Fields:**

    - `n_heads`, `d_model`, `d_head` (`None`: equal to `d_model`).
    - `value`: with a value path `v_s = a_s W_V[k] W_O[k]`; without, `v_s = a_s`.
    - `residual`: add the token's own embedding to the attention output, `z_t = sum_k u_t + h_t`
      (and the MLP's output to its input, `z <- z + m`, when there is an MLP).
    - `positional`: `"none"` or `"learned"` (a `W_pos` of shape `(T, d_model)`).
    - `attn_scale`: the factor `c` in `score = c (a_t W_Q) . (a_s W_K)`; `None` means `1/sqrt(d_head)`.
    - `layernorm`: `"none"` or `"pre"`: LayerNorm of the attention input (`ln1`), of the MLP input
      (`ln2`) and before the unembedding (`lnf`), PyTorch's (biased variance, eps `1e-5`).
    - `mlp`: the MLP's hidden width (`None`: no MLP), `m = act(LN2(z) W_in + b_in) W_out + b_out`.
    - `activation`: `"gelu"` (exact, the erf form, PyTorch's default) or `"relu"`.
    - `tied`: the unembedding is `W_E`ᵀ (no `W_U` weight).
    - `unembed_bias`: a bias `b_U` on the logits.
    - `n_layers`: 1 (default) or 2 attention layers. A second layer (`W_Q2`, `W_K2`, and `W_V2`,
      `W_O2` with a value path) reads the residual stream the first one wrote, which is what an
      induction head needs; two-layer models are attention-only with a residual stream.
    """

    n_heads: int = eqx.field(static=True, default=1, converter=_plain_number)
    d_model: int = eqx.field(static=True, default=8, converter=_plain_number)
    d_head: int | None = eqx.field(static=True, default=None, converter=_plain_number)
    value: bool = eqx.field(static=True, default=False, converter=_plain_number)
    residual: bool = eqx.field(static=True, default=False, converter=_plain_number)
    positional: str = eqx.field(static=True, default="none")
    attn_scale: float | None = eqx.field(static=True, default=None, converter=_plain_number)
    layernorm: str = eqx.field(static=True, default="none")
    mlp: int | None = eqx.field(static=True, default=None, converter=_plain_number)
    activation: str = eqx.field(static=True, default="gelu")
    tied: bool = eqx.field(static=True, default=False, converter=_plain_number)
    unembed_bias: bool = eqx.field(static=True, default=False, converter=_plain_number)
    n_layers: int = eqx.field(static=True, default=1, converter=_plain_number)

    def __check_init__(self):
        for name in ("n_heads", "d_model"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {v!r}.")
        if self.d_head is not None and (
            isinstance(self.d_head, bool) or not isinstance(self.d_head, (int, np.integer)) or self.d_head < 1
        ):
            raise ValueError(f"`d_head` must be an integer >= 1 or None (= d_model); got {self.d_head!r}.")
        for name in ("value", "residual", "tied", "unembed_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False; got {getattr(self, name)!r}.")
        if self.positional not in ("none", "learned"):
            raise ValueError(f"`positional` must be 'none' or 'learned'; got {self.positional!r}.")
        if self.layernorm not in LAYERNORMS:
            raise ValueError(f"`layernorm` must be one of {LAYERNORMS} ('pre': LayerNorm before attention, before the "
                             f"MLP and before the unembedding); got {self.layernorm!r}.")
        if self.mlp is not None and (isinstance(self.mlp, bool) or not isinstance(self.mlp, (int, np.integer))
                                     or self.mlp < 1):
            raise ValueError(f"`mlp` must be an integer >= 1 (the MLP's hidden width) or None (no MLP); "
                             f"got {self.mlp!r}.")
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, (int, np.integer)) or \
                self.n_layers not in (1, 2):
            raise ValueError(f"`n_layers` must be 1 or 2; got {self.n_layers!r}.")
        if self.n_layers == 2 and not self.residual:
            raise ValueError("a two-layer model needs the residual stream (the second layer reads what the first "
                             "wrote there): set residual=True.")
        if self.n_layers == 2 and (self.layernorm != "none" or self.mlp is not None):
            raise ValueError("two-layer models are attention-only here: use layernorm='none' and no mlp with "
                             "n_layers=2.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}; got {self.activation!r}.")
        if self.attn_scale is not None and not (
            isinstance(self.attn_scale, (int, float)) and not isinstance(self.attn_scale, bool)
            and math.isfinite(self.attn_scale) and self.attn_scale > 0
        ):
            raise ValueError(f"`attn_scale` must be a finite number > 0, or None for 1/sqrt(d_head); "
                             f"got {self.attn_scale!r}.")

    @property
    def head_dim(self) -> int:
        return self.d_model if self.d_head is None else int(self.d_head)

    @property
    def score_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim) if self.attn_scale is None else float(self.attn_scale)

    def to_dict(self) -> dict:
        """Every field by name (what trajectory files and `TransformerConfig(**d)` read back)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> TransformerConfig:
        """Inverse of `to_dict`; an unknown field is a `ValueError` naming it (a file from a newer gflow)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; this gflow's TransformerConfig has {sorted(known)} "
                             "(a file written by a newer gflow?).")
        return cls(**data)
