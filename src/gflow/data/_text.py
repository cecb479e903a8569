"""Text as data: tokenising a corpus, counting its bigrams, and cutting it into training windows.

The estimator behind `MarkovSpec.from_text` (docs/text.md):

- **Tokens.** `level="char"`: every character, with each run of white space (newlines included)
  read as one space, labelled "␣". `level="word"`: lower-cased words, `[a-z0-9]+` with an optional
  apostrophe suffix ("don't", "it's"); punctuation and white space separate words and are dropped.
- **Vocabulary.** The `vocab_size - 1` most frequent types (ties broken alphabetically), then one
  OTHER token for every other type, labelled "⟨other⟩" and always last.
- **Chain.** $C_{ab}$ counts the times token $b$ follows token $a$ in the stream, and
  $P_{ab} = (C_{ab} + s) / \\sum_{b'} (C_{ab'} + s)$ with `smoothing` $s \\ge 0$ (additive smoothing).
  With $s = 0$, $P$ is exactly the normalised bigram counts; a token that is never followed by
  another (it occurs only as the last token) gets the unigram law as its row. The law of $x_1$ is
  the empirical unigram law.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import jax
import numpy as np

from ..common import as_prng_key, check_int

OTHER = "⟨other⟩"
SPACE = "␣"
LEVELS = ("char", "word")
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
"""A word: letters and digits of any script (Unicode word characters but `_`), with one inner
apostrophe ("don't"); "é", "à", "ß" or "я" belong to words, as they do in the languages that use them."""
WHITESPACE = re.compile(r"\s+")
TEXT_SUFFIXES = (".txt", ".raw", ".json", ".jsonl", ".md", ".tokens")


def read_text(text_or_path, name: str = "text_or_path") -> str:
    """The text itself, or the contents of the file it names (UTF-8). A string counts as a path when
    it names an existing file, or looks like a file name (no white space, a text-file suffix or a
    path separator): then a missing file is an error, not a text to tokenise."""
    if isinstance(text_or_path, os.PathLike) or (isinstance(text_or_path, str) and _looks_like_path(text_or_path)):
        path = os.fspath(text_or_path)
        if not os.path.isfile(path):
            what = ("is a directory" if os.path.isdir(path) else "is not a regular file (a device, a pipe or a "
                    "socket)" if os.path.exists(path) else "does not exist")
            raise ValueError(f"`{name}`: the file {path!r} {what}; pass the path of a UTF-8 text file, or the text.")
        with open(path, "rb") as fh:
            data = fh.read()
        if b"\0" in data[:65536]:
            raise ValueError(f"`{name}`: {path!r} is a binary file (it holds NUL bytes); pass a UTF-8 text file.")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"`{name}`: {path!r} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to "
                             "UTF-8 first.") from None
    if not isinstance(text_or_path, str):
        raise ValueError(f"`{name}` must be a text (str) or a file path; got {type(text_or_path).__name__}.")
    return text_or_path


def _looks_like_path(s: str) -> bool:
    if os.path.isfile(s):
        return True
    return (len(s) < 4096 and not WHITESPACE.search(s) and
            (s.lower().endswith(TEXT_SUFFIXES) or os.sep in s))


def split_tokens(text: str, level: str) -> list[str]:
    """The token strings of `text` at `level` ("char" or "word"), before the vocabulary is cut."""
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}; got {level!r}.")
    if level == "char":
        return list(WHITESPACE.sub(" ", text).strip())
    return WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class TokenizedText:
    """A token stream over a vocabulary of `len(labels)` tokens, the OTHER token last.

    - `tokens`: int32 token ids in text order; `labels`: printable labels; `level`; `types`: how many
      distinct types the text had before the cut.
    """

    tokens: np.ndarray
    labels: tuple[str, ...]
    level: str
    types: int

    @property
    def V(self) -> int:
        return len(self.labels)

    def unigram(self) -> np.ndarray:
        """The empirical law of a token."""
        counts = np.bincount(self.tokens, minlength=self.V).astype(np.float64)
        return counts / counts.sum()

    def bigram_counts(self) -> np.ndarray:
        """`C[a, b]`: how many times token b follows token a."""
        counts = np.zeros((self.V, self.V))
        np.add.at(counts, (self.tokens[:-1], self.tokens[1:]), 1.0)
        return counts

    def transition_matrix(self, smoothing: float = 0.0) -> np.ndarray:
        """$P_{ab} = (C_{ab} + s) / \\sum_{b'}(C_{ab'} + s)$; a row without successors gets the unigram law."""
        counts = self.bigram_counts() + smoothing
        rows = counts.sum(axis=1, keepdims=True)
        return np.where(rows > 0, counts / np.where(rows > 0, rows, 1.0), self.unigram()[None, :])

    def windows(self, T: int, *, n: int | None = None, key=None) -> np.ndarray:
        """Windows $x_1..x_{T+1}$ of the stream, int32 `(N, T+1)`: all of them (stride one), or `n` of
        them drawn without replacement with `key` (a PRNG key or an integer seed)."""
        T = check_int("T", T, 1)
        total = len(self.tokens) - T
        if total < 1:
            raise ValueError(f"`T` = {T} is too long for this text: a window needs T + 1 = {T + 1} tokens and the text "
                             f"has {len(self.tokens)}. Use a shorter T or a longer text.")
        starts = np.arange(total)
        if n is not None:
            n = check_int("n", n, 1)
            if n < total:
                starts = np.sort(np.asarray(jax.random.choice(as_prng_key("key", 0 if key is None else key), total,
                                                              (n,), replace=False)))
        return np.stack([self.tokens[s:s + T + 1] for s in starts]).astype(np.int32)


def tokenize(text_or_path, vocab_size: int, level: str = "word") -> TokenizedText:
    """Tokenise a text (or the file it names) into `vocab_size` tokens: the `vocab_size - 1` most
    frequent types and OTHER (module docstring)."""
    vocab_size = check_int("vocab_size", vocab_size, 2)
    words = split_tokens(read_text(text_or_path), level)
    if len(words) < 2:
        raise ValueError(f"`text_or_path`: the text has {len(words)} {level} token(s); a chain needs at least two "
                         "consecutive tokens. Pass a longer text.")
    counts = collections.Counter(words)
    if len(counts) < vocab_size:
        raise ValueError(f"`vocab_size` = {vocab_size} needs at least {vocab_size} distinct {level} types "
                         f"({vocab_size - 1} kept and at least one for OTHER); the text has {len(counts)}. "
                         f"Use vocab_size <= "
                         f"{len(counts)} or a longer text.")
    kept = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 1]
    index = {w: i for i, w in enumerate(kept)}
    other = vocab_size - 1
    tokens = np.fromiter((index.get(w, other) for w in words), dtype=np.int32, count=len(words))
    labels = tuple(SPACE if w == " " else w for w in kept) + (OTHER,)
    return TokenizedText(tokens=tokens, labels=labels, level=level, types=len(counts))
