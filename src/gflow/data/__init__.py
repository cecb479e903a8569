"""Data sources: what the model is trained on (`AbstractDataSource` says what every source offers).

`SOURCE_KINDS` names each source kind as trajectory files record it; a new kind is one module and
one row here.
"""

from typing import Any

from ._corpora import default_corpus as default_corpus
from ._corpora import load_hf_dataset as load_hf_dataset
from ._corpora import load_tinystories as load_tinystories
from ._corpora import load_wikitext as load_wikitext
from ._enumerate import count_text as count_text
from ._enumerate import enumerate_contexts as enumerate_contexts
from ._enumerate import over_budget as over_budget
from ._in_context import InContextMarkovSpec as InContextMarkovSpec
from ._markov import MarkovSpec as MarkovSpec
from ._markov import stationary_distribution as stationary_distribution
from ._source import LEVEL_BUDGET as LEVEL_BUDGET
from ._source import POSITIONS as POSITIONS
from ._source import AbstractDataSource as AbstractDataSource
from ._source import position_weights as position_weights
from ._sparse_lag import SparseLagSpec as SparseLagSpec
from ._sparse_lag import block_lags as block_lags
from ._text import OTHER as OTHER
from ._text import TokenizedText as TokenizedText
from ._text import tokenize as tokenize

SOURCE_KINDS: dict[str, type[AbstractDataSource]] = {
    MarkovSpec.kind: MarkovSpec,
    SparseLagSpec.kind: SparseLagSpec,
    InContextMarkovSpec.kind: InContextMarkovSpec,
}


def source_from_json(data: dict[str, Any]) -> AbstractDataSource:
    """The data source a `to_json()` dict describes (a dict without `"kind"` is a first-order chain,
    as trajectory files of format 1 wrote it)."""
    kind = data.get("kind", MarkovSpec.kind)
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown data-source kind {kind!r}; this gflow knows {sorted(SOURCE_KINDS)}.")
    return SOURCE_KINDS[kind].from_json(data)
