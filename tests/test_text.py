"""Chains estimated from text and flows on text windows (docs/text.md): exact counts on texts whose
bigrams are known, the estimator's conventions, the corpus readers on small files written here, and a
clear error for every kind of bad input."""

import importlib.util
import json

import jax
import numpy as np
import pytest

import gflow
from conftest import BAD_TYPE
from gflow.data import OTHER, default_corpus, load_hf_dataset, load_tinystories, load_wikitext, tokenize

# "the" x3, "cat" x2, "dog" x1, "a" x1: V = 3 keeps "the", "cat"; "dog" and "a" are OTHER.
# Stream: the cat the OTHER the cat OTHER.
KNOWN = "The cat, the dog; the cat a."
KNOWN_COUNTS = np.array([[0, 2, 1],   # the -> cat, cat, OTHER
                         [1, 0, 1],   # cat -> the, OTHER
                         [1, 0, 0]])  # OTHER -> the (the last OTHER has no successor)


def test_bigram_counts_and_chain_are_exact_on_a_known_text():
    tokens = tokenize(KNOWN, 3)
    assert tokens.labels == ("the", "cat", OTHER) and tokens.types == 4
    np.testing.assert_array_equal(tokens.tokens, [0, 1, 0, 2, 0, 1, 2])
    np.testing.assert_array_equal(tokens.bigram_counts(), KNOWN_COUNTS)
    spec = gflow.MarkovSpec.from_text(KNOWN, vocab_size=3, T=4)
    np.testing.assert_array_equal(np.asarray(spec.P), KNOWN_COUNTS / KNOWN_COUNTS.sum(1, keepdims=True))
    np.testing.assert_array_equal(np.asarray(spec.init), np.array([3, 2, 2]) / 7)
    assert spec.labels == ("the", "cat", OTHER)


def test_smoothing_is_additive_and_a_last_only_token_gets_the_unigram_row():
    spec = gflow.MarkovSpec.from_text(KNOWN, vocab_size=3, T=4, smoothing=0.5)
    smoothed = KNOWN_COUNTS + 0.5
    np.testing.assert_allclose(np.asarray(spec.P), smoothed / smoothed.sum(1, keepdims=True), rtol=0, atol=1e-15)
    # "b" is kept (ties broken alphabetically) but occurs only as the last token: no successor.
    tokens = tokenize("c a c a d b", 4)
    assert tokens.labels == ("a", "c", "b", OTHER)
    spec = gflow.MarkovSpec.from_text("c a c a d b", vocab_size=4, T=2)
    np.testing.assert_array_equal(np.asarray(spec.P)[2], tokens.unigram())
    np.testing.assert_array_equal(tokens.unigram(), np.array([2, 2, 1, 1]) / 6)


def test_characters_read_white_space_as_one_space_token():
    tokens = tokenize("ab\n\n ab  a", 3, level="char")
    # "ab ab a": a x3, b x2, space x2; the tie goes to the space (it sorts first).
    assert tokens.labels == ("a", "␣", OTHER)
    np.testing.assert_array_equal(tokens.tokens, [0, 2, 1, 0, 2, 1, 0])
    spaced = tokenize("a b a b a c", 3, level="char")
    assert spaced.labels == ("␣", "a", OTHER)


def test_windows_are_slices_of_the_stream_and_subsets_are_seeded():
    tokens = tokenize(KNOWN, 3)
    every = tokens.windows(2)
    assert every.shape == (5, 3) and every.dtype == np.int32
    for s, w in enumerate(every):
        np.testing.assert_array_equal(w, tokens.tokens[s:s + 3])
    some = tokens.windows(2, n=3, key=7)
    assert some.shape == (3, 3)
    np.testing.assert_array_equal(some, tokens.windows(2, n=3, key=jax.random.key(7)))
    assert all(any((w == v).all() for v in every) for w in some)
    # Drawn without replacement: on a text of distinct words every window is different.
    distinct = tokenize("a b c d e f g h", 8)
    assert len({tuple(w) for w in distinct.windows(1, n=6, key=3)}) == 6


def test_the_chain_is_the_law_of_the_bigram_windows():
    """Two independent computations: the empirical risk over every bigram window of a text, and the
    exact (enumerated) loss of the estimated chain started from the law of a window's first token."""
    text = default_corpus()[:20000]
    tokens = tokenize(text, 6)
    spec = gflow.MarkovSpec.from_text(text, vocab_size=6, T=1)
    first = np.bincount(tokens.tokens[:-1], minlength=6) / (len(tokens.tokens) - 1)
    chain = gflow.MarkovSpec(spec.P, first, T=1, labels=spec.labels)
    config = gflow.TransformerConfig(d_model=4)
    params = gflow.init_params(3, config, chain, scale=0.7)
    on_text = gflow.population_loss(params, spec, config, "dataset", dataset=tokens.windows(1))
    exact = gflow.population_loss(params, chain, config, "enumerate")
    np.testing.assert_allclose(float(on_text), float(exact), rtol=1e-12)


def test_default_corpus_gives_a_readable_word_chain_offline():
    spec = gflow.MarkovSpec.from_text(vocab_size=16, T=8)
    assert spec.V == 16 and spec.labels[-1] == OTHER and "the" in spec.labels
    assert all(label.isprintable() and label for label in spec.labels)
    P = np.asarray(spec.P)
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-14)
    # The labels travel with the chain into files.
    again = gflow.data.source_from_json(json.loads(json.dumps(spec.to_json())))
    assert again.labels == spec.labels


def test_wikitext_reader_drops_headings_and_undoes_escapes(tmp_path):
    raw = tmp_path / "wiki.train.raw"
    raw.write_text(" \n = Valkyria Chronicles = \n \n The game @-@ a role @-@ playing one , sold 1 @,@ 000 "
                   "copies in 2 @.@ 5 weeks . \n = = Plot = = \n It is set in 1935 . \n", encoding="utf-8")
    text = load_wikitext(raw)
    assert "Valkyria" not in text and "Plot" not in text and "@" not in text
    assert "role-playing" in text and "1,000" in text and "2.5" in text and "It is set in 1935" in text


def test_tinystories_reader_takes_text_json_and_jsonl(tmp_path):
    stories = ["Once upon a time there was a cat.", "Tom liked the red ball."]
    txt = tmp_path / "TinyStories-valid.txt"
    txt.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    js = tmp_path / "data00.json"
    js.write_text(json.dumps([{"story": s, "source": "x"} for s in stories]), encoding="utf-8")
    jl = tmp_path / "data.jsonl"
    jl.write_text("\n".join(json.dumps({"story": s}) for s in stories), encoding="utf-8")
    for path in (txt, js, jl):
        assert load_tinystories(path) == "\n\n".join(stories)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "no story field"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="'story' field"):
        load_tinystories(bad)
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tinystories(bad)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="the `datasets` extra is installed")
def test_hugging_face_loader_without_the_extra_says_how_to_get_it():
    with pytest.raises(ValueError, match=r"gflow\[text\]"):
        load_hf_dataset("wikitext", config="wikitext-2-raw-v1")


def test_bad_text_input_is_named_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="text_or_path.*0 word token"):
        gflow.MarkovSpec.from_text("", vocab_size=3, T=4)
    with pytest.raises(ValueError, match="text_or_path.*1 word token"):
        gflow.MarkovSpec.from_text("hello!", vocab_size=3, T=4)
    with pytest.raises(ValueError, match="vocab_size.*the text has 4.*vocab_size <= 4"):
        gflow.MarkovSpec.from_text(KNOWN, vocab_size=5, T=4)
    with pytest.raises(BAD_TYPE, match="vocab_size"):
        gflow.MarkovSpec.from_text(KNOWN, vocab_size=1, T=4)
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"abc\x00\x01\x02 def")
    with pytest.raises(ValueError, match="binary file"):
        gflow.MarkovSpec.from_text(binary, vocab_size=3, T=4)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait, caf\xe9 noir".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text.*convert it"):
        gflow.MarkovSpec.from_text(str(latin), vocab_size=3, T=4)
    with pytest.raises(ValueError, match="does not exist"):
        gflow.MarkovSpec.from_text(tmp_path / "missing.txt", vocab_size=3, T=4)
    with pytest.raises(ValueError, match="does not exist"):
        gflow.MarkovSpec.from_text("corpora/missing.txt", vocab_size=3, T=4)
    with pytest.raises(ValueError, match="is a directory"):
        gflow.MarkovSpec.from_text(tmp_path, vocab_size=3, T=4)
    with pytest.raises(ValueError, match="smoothing"):
        gflow.MarkovSpec.from_text(KNOWN, vocab_size=3, T=4, smoothing=-1.0)
    with pytest.raises(ValueError, match="level"):
        gflow.MarkovSpec.from_text(KNOWN, vocab_size=3, T=4, level="sentence")
    with pytest.raises(ValueError, match=r"`T` = 7 is too long.*text has 7.*shorter T"):
        tokenize(KNOWN, 3).windows(7)
    with pytest.raises(BAD_TYPE, match="text_or_path"):
        gflow.MarkovSpec.from_text(12, vocab_size=3, T=4)


def test_text_chains_in_settings_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the cat " * 20, encoding="utf-8")
    raw = {"chain": {"kind": "text", "text_or_path": str(corpus), "vocab_size": 4, "T": 4},
           "model": {"d_model": 3}, "flow": {"t_end": 30.0, "n_save": 21}, "output": {"dir": str(tmp_path / "out")}}
    spec, _, _ = gflow.ExperimentSettings.from_dict(raw).build()
    assert spec.labels == ("the", "cat", "on", OTHER)
    with pytest.raises(ValueError, match=r"settings: \[chain\].*vocab_size.*the text has 7"):
        gflow.ExperimentSettings.from_dict({"chain": {**raw["chain"], "vocab_size": 9}})
    with pytest.raises(ValueError, match=r"settings: unknown key\(s\) \['lam'\] in \[chain\] for kind = 'text'"):
        gflow.ExperimentSettings.from_dict({"chain": {**raw["chain"], "lam": 0.5}})
    # The report's tables and figures name the words.
    from gflow.app import main
    toml = tmp_path / "text.toml"
    toml.write_text(f'[chain]\nkind = "text"\ntext_or_path = "{corpus}"\nvocab_size = 4\nT = 4\n'
                    f'[model]\nd_model = 3\n[flow]\nt_end = 30.0\nn_save = 21\nloss = "meanfield"\n', encoding="utf-8")
    assert main(["run", str(toml), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert gflow.load(tmp_path / "out" / "trajectory.npz").spec.labels == spec.labels
    # Two runs side by side in the timelines figure: one row of events each, the progress of each loss.
    from gflow.analysis import compute_metrics, detect_stages
    from gflow.plot import loss_remaining, timelines_figure
    m = compute_metrics(gflow.load(tmp_path / "out" / "trajectory.npz"))
    remaining = loss_remaining(m)
    assert remaining[0] == 1.0 and remaining.min() == 0.0
    below = loss_remaining(m, lowest=m.loss.min() - 1.0)
    np.testing.assert_allclose(below.min(), 1.0 / (m.loss[0] - m.loss.min() + 1.0))
    fig = timelines_figure([("text", m, detect_stages(m)), ("again", m, detect_stages(m))])
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["text", "again"]
    with pytest.raises(ValueError, match="runs"):
        timelines_figure([])
    with pytest.raises(ValueError, match="one level"):
        timelines_figure([("text", m, [])], lowest=[None, None])
