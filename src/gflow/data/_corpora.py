"""Corpora on disk: an offline default, and readers for WikiText and TinyStories files you have.

Nothing here downloads anything. `default_corpus()` is English text that ships with CPython (the
help topics of `pydoc_data`, about 465,000 characters and 64,000 words of technical prose). The
readers take files you have downloaded yourself; `load_hf_dataset` uses the `datasets` library
(`pip install gflow[text]`) and works offline when the data is in its cache.
"""

from __future__ import annotations

import json
import os
import re

from ._text import read_text

HEADING = re.compile(r"^\s*=( =)* .* =( =)*\s*$")


def default_corpus() -> str:
    """The help topics that ship with CPython (`pydoc_data.topics`), in a fixed order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        raise ValueError("the default corpus (CPython's pydoc_data) is not installed with this Python; pass a text "
                         "or a file path as `text_or_path`.") from None
    return "\n".join(topics[k] for k in sorted(topics))


def load_wikitext(path: str | os.PathLike) -> str:
    """A WikiText-2 or WikiText-103 raw file (`wiki.train.raw`, ...): article text without the
    `= Heading =` lines, with the `@-@`, `@,@`, `@.@` escapes of the raw format undone."""
    lines = read_text(os.fspath(path), "path").splitlines()
    text = "\n".join(line for line in lines if line.strip() and not HEADING.match(line))
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")


def load_tinystories(path: str | os.PathLike) -> str:
    """TinyStories from a local file: the `.txt` release (stories separated by `<|endoftext|>`) or a
    `.json` shard (a list of records with a `"story"` field). Stories are joined by blank lines."""
    path = os.fspath(path)
    text = read_text(path, "path")
    if path.lower().endswith((".json", ".jsonl")):
        try:
            records = ([json.loads(line) for line in text.splitlines() if line.strip()]
                       if path.lower().endswith(".jsonl") else json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"`path`: {path!r} is not valid JSON ({e}).") from None
        if not (isinstance(records, list) and all(isinstance(r, dict) and "story" in r for r in records)):
            raise ValueError(f"`path`: {path!r} must hold a list of records with a 'story' field (a TinyStories "
                             "JSON shard).")
        stories = [str(r["story"]) for r in records]
    else:
        stories = text.split("<|endoftext|>")
    return "\n\n".join(s.strip() for s in stories if s.strip())


def load_hf_dataset(name: str, *, split: str = "train", config: str | None = None, field: str = "text",
                    limit: int | None = None) -> str:
    """Text from a Hugging Face dataset (`"wikitext"` with `config="wikitext-2-raw-v1"`,
    `"roneneldan/TinyStories"`): needs `pip install gflow[text]`, and the data cached or a network.
    `limit` keeps the first records only."""
    try:
        import datasets
    except ImportError:
        raise ValueError("load_hf_dataset needs the `datasets` library: pip install 'gflow[text]' (or read a local "
                         "file with load_wikitext / load_tinystories).") from None
    data = datasets.load_dataset(name, config, split=split)
    if field not in data.column_names:
        raise ValueError(f"`field` {field!r} is not a column of {name!r}; its columns are {data.column_names}.")
    rows = data[field] if limit is None else data.select(range(min(limit, len(data))))[field]
    return "\n".join(str(r) for r in rows)
