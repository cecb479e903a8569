"""The class ladder of sparse tasks (`analysis/_lag_events.py`): the class the model is in is read
from its KL to each class's teacher, so blocks come in the order the model learns them, not in lag
order; the teachers and levels (subsets of blocks, the bag of context) against brute-force sums
written here with numpy; and bad input.

One flow is shared by the tests: two blocks, the *second* (older) one three times stronger, so a
model that learns the strongest block first acquires block 2 before block 1 (the loss-midpoint rule
of gflow <= 0.x credited block 1 first whatever the model did)."""

import itertools
import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import gflow
from conftest import BAD_TYPE
from gflow.analysis import (
    BAG,
    ENTRY,
    NO_CONTEXT,
    UNIFORM,
    LagClass,
    class_levels,
    class_teachers,
    detect_lag_events,
    ladder_classes,
    ladder_table,
    lag_class,
    lag_ladder,
    lag_probes,
    restricted_teacher_kl,
    stage_table,
    strength_order,
)
from gflow.data import SparseLagSpec, block_lags


@pytest.fixture(scope="module")
def run():
    """V = 4, blocks at lags 1 and 2 with strengths 3 and 9, two heads; 81 saved points to t = 1000
    (the model is in class {2} from t ~ 117 and in {1, 2} from t ~ 200). About 5 s on two cores."""
    teacher_key, init_key = jax.random.split(jax.random.key(1))
    spec = SparseLagSpec.random(teacher_key, 4, (1, 1), strengths=(3.0, 9.0))
    config = gflow.TransformerConfig(n_heads=2, d_model=4, value=True, positional="learned")
    traj = gflow.simulate(gflow.init_params(init_key, config, spec, scale=0.1), spec, (0.0, 1e3), config=config,
                          loss="enumerate", n_save=81, progress=False)
    probes = lag_probes(traj, spec)
    return SimpleNamespace(spec=spec, config=config, traj=traj, probes=probes, ladder=lag_ladder(traj, spec, probes),
                           events=detect_lag_events(traj, spec))


def teacher(spec: SparseLagSpec, window) -> np.ndarray:
    """The next-token law after `window` (oldest first), term by term from the formula."""
    A = np.asarray(spec.A)
    logits = np.zeros(spec.V)
    for k, (lags, alphas) in enumerate(zip(block_lags(spec.spans, spec.stride), spec.weights, strict=True)):
        for i, alpha in zip(lags, alphas, strict=True):
            logits += alpha * A[k][:, window[-i]]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def sequences(spec: SparseLagSpec):
    """Every x_1..x_(T+1) with its probability: a uniform burn-in of L tokens, then the teacher."""
    V, L, T = spec.V, spec.L, spec.T
    for x in itertools.product(range(V), repeat=T + 1):
        p = float(V) ** -L
        for t in range(L, T + 1):
            p *= teacher(spec, x[t - L:t])[x[t]]
        yield x, p


def conditional_entropy(spec: SparseLagSpec, t: int, feature) -> float:
    """H(x_(t+1) | feature(x_1..x_t)) by summing over whole sequences."""
    joint: dict = {}
    for x, p in sequences(spec):
        key = (feature(x[:t]), x[t])
        joint[key] = joint.get(key, 0.0) + p
    marginal: dict = {}
    for (f, _), p in joint.items():
        marginal[f] = marginal.get(f, 0.0) + p
    return -sum(p * math.log(p / marginal[f]) for (f, _), p in joint.items() if p > 0)


def test_blocks_come_in_the_order_the_model_acquires_them(run):
    """The strongest block (2) is learnt first: the model's KL to the {2} teacher falls while the KL
    to {1} does not, and `detect_lag_events` (called as before) reports block 2, then block 1."""
    assert strength_order(run.spec) == [2, 1]
    acquired = [e for e in run.events if e.kind == "block_acquired"]
    assert [e.details["block"] for e in acquired] == [2, 1]
    assert [e.details["class"] for e in acquired] == ["{2}", "{1, 2}"]
    assert acquired[0].time < acquired[1].time
    assert run.ladder.acquisition_order == [2, 1]
    assert [v.cls for v in run.ladder.visits][-2:] == [LagClass("blocks", (2,)), LagClass("blocks", (1, 2))]
    assert "block 2" in stage_table(run.events)


def test_membership_is_read_from_the_kl(run):
    """When an acquisition fires, the KL to the class entered has just fallen to ENTRY times its own
    scale; the KL to a class the model has not acquired is at least its whole scale. Re-solving the
    flow up to the event time lands on ENTRY."""
    p, teachers = run.probes, run.probes.teachers
    R = p.class_ratio
    first = next(e for e in run.events if e.kind == "block_acquired")
    c = teachers.index(LagClass("blocks", (2,)))
    i = int(np.searchsorted(p.times, first.time))
    assert R[i - 1, c] > ENTRY >= R[i, c]
    assert first.details["kl"] == pytest.approx(ENTRY * teachers.scales[c], rel=1e-12)
    for other in (LagClass("blocks", (1,)), LagClass("blocks", (1, 2))):  # not acquired yet
        assert R[i, teachers.index(other)] >= 1.0
    assert p.current_class[i] == c and p.current_class[i - 1] != c
    sub = gflow.simulate(run.traj.params_at(i - 1), run.spec, (float(p.times[i - 1]), first.time), config=run.config,
                         loss="enumerate", n_save=2, progress=False)
    assert teachers.ratio(teachers.kl(sub.params, run.config))[-1, c] == pytest.approx(ENTRY, abs=2e-3)
    # At the end the model is in the richest class, whose teacher is the full teacher.
    full = teachers.index(LagClass("blocks", (1, 2)))
    assert p.current_class[-1] == full and R[-1, full] < 0.1


def test_the_kl_to_a_class_teacher_is_a_brute_force_sum(run):
    """D_c at the last saved point against a sum over the contexts: the model's own prediction, and the
    Bayes teacher of {2} (the law of x_3 given x_1 alone: x_2 is uniform in the burn-in)."""
    spec, V = run.spec, run.spec.V
    params = run.traj.params_at(-1)
    contexts = np.array(list(itertools.product(range(V), repeat=2)), dtype=np.int32)
    logits = gflow.model.sequence_logits(params, jax.numpy.asarray(contexts), run.config)[:, -1]
    log_q = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = {LagClass("blocks", (2,)): 0.0, NO_CONTEXT: 0.0, UNIFORM: 0.0}
    marginal = np.mean([teacher(spec, w) for w in contexts], axis=0)
    for n, (x1, x2) in enumerate(contexts):
        laws = {LagClass("blocks", (2,)): np.mean([teacher(spec, (x1, b)) for b in range(V)], axis=0),
                NO_CONTEXT: marginal, UNIFORM: np.full(V, 1.0 / V)}
        for c, law in laws.items():
            want[c] += np.sum(law * (np.log(law) - log_q[n])) / V**2
    teachers = run.probes.teachers
    for c, value in want.items():
        assert run.probes.class_kl[-1, teachers.index(c)] == pytest.approx(value, rel=1e-10)
    got = restricted_teacher_kl(run.traj, spec, [NO_CONTEXT, LagClass("blocks", (2,))])
    np.testing.assert_allclose(got[-1], [want[NO_CONTEXT], want[LagClass("blocks", (2,))]], rtol=1e-10)


def test_levels_of_subsets_and_of_the_bag_of_context():
    """Exact levels against sums over whole sequences (T = 3 > L = 2, every position scored): the bag
    of context sees the counts of x_1..x_t, beyond the teacher's window at t = 3. The prefixes agree
    with `block_levels` (windows), and the KL between nested teachers is their level gap."""
    spec = SparseLagSpec.random(5, 3, (1, 1), strengths=(1.5, 3.0), T=3, positions="all")
    V = spec.V
    counts = lambda x: tuple(sum(1 for a in x if a == b) for b in range(V))  # noqa: E731
    burn_in = math.log(V) / 3  # t = 1: x_2 is uniform
    want = {
        "bag of context": burn_in + sum(conditional_entropy(spec, t, counts) for t in (2, 3)) / 3,
        "{2}": burn_in + sum(conditional_entropy(spec, t, lambda x: x[-2]) for t in (2, 3)) / 3,
        "no context": burn_in + sum(conditional_entropy(spec, t, lambda x: 0) for t in (2, 3)) / 3,
        "uniform": math.log(V),
    }
    got = class_levels(spec)
    for label, value in want.items():
        assert got[label] == pytest.approx(value, rel=1e-12), label
    assert [got["no context"], got["{1}"], got["{1, 2}"]] == pytest.approx(spec.block_levels(), rel=1e-12)
    assert got["{1, 2}"] < got["bag of context"] < got["no context"]
    teachers = class_teachers(spec)
    two, both = LagClass("blocks", (2,)), LagClass("blocks", (1, 2))
    scored = 2 / 3  # the KL averages over the queries after the burn-in
    assert teachers.divergence(both, two) == pytest.approx((got["{2}"] - got["{1, 2}"]) / scored, rel=1e-10)
    assert teachers.scales[teachers.index(BAG)] == pytest.approx((got["no context"] - got["bag of context"]) / scored,
                                                                 rel=1e-10)


def test_plateaus_are_matched_to_classes(run):
    """The first plateau is the untrained model's (uniform class, at ln V); the last is in {1, 2}, at
    its level; the table names the classes, the bag's level and the blocks acquired."""
    first, last = run.ladder.plateaus[0], run.ladder.plateaus[-1]
    assert first.inside and first.cls == UNIFORM and first.loss == pytest.approx(math.log(4), abs=1e-3)
    assert last.inside and last.cls == LagClass("blocks", (1, 2)) and abs(last.loss - last.level) < 0.01
    table = ladder_table(run.ladder)
    assert "bag of context" in table and "| {2} |" in table and "block 2" in table


def test_ladder_classes_stay_few():
    """Every subset up to four blocks; above, prefixes, the strength-ordered chain and single blocks."""
    small = SparseLagSpec.random(0, 2, (1, 1, 1))
    assert len(ladder_classes(small)) == 3 + 7
    big = SparseLagSpec.random(0, 2, (1,) * 6, strengths=(1, 6, 2, 5, 3, 4))
    classes = ladder_classes(big)
    assert strength_order(big) == [2, 4, 6, 5, 3, 1]
    assert LagClass("blocks", (2, 4, 6)) in classes and LagClass("blocks", (1, 2, 3)) in classes
    assert LagClass("blocks", (5,)) in classes and len(set(classes)) == len(classes) <= 3 + 3 * 6


def test_bad_input_is_named(run):
    spec = run.spec
    markov = gflow.MarkovSpec.sticky(pi=[0.5, 0.5], lam=0.5, T=4)
    with pytest.raises(ValueError, match="`blocks` is empty"):
        lag_class(spec, [])
    with pytest.raises(ValueError, match=r"`blocks` = \(1, 3\) names \[3\]"):
        lag_class(spec, (1, 3))
    with pytest.raises(ValueError, match="`blocks`.*twice"):
        lag_class(spec, (2, 2))
    with pytest.raises(ValueError, match="`spec` must be a SparseLagSpec"):
        lag_class(markov, (1,))
    with pytest.raises(ValueError, match="`spec` must be a SparseLagSpec"):
        detect_lag_events(run.traj, markov)
    with pytest.raises(ValueError, match="`spec` must be a SparseLagSpec"):
        class_levels(markov)
    with pytest.raises(ValueError, match="`classes`: class {1, 3} names a block beyond"):
        class_teachers(spec, [UNIFORM, LagClass("blocks", (1, 3))])
    with pytest.raises(ValueError, match="`classes` must hold at least two"):
        restricted_teacher_kl(run.traj, spec, [UNIFORM])
    with pytest.raises(ValueError, match="`kind`"):
        LagClass("bags")
    with pytest.raises(ValueError, match="`blocks` must be empty"):
        LagClass("bag", (1,))
    with pytest.raises(BAD_TYPE, match="ladder"):
        ladder_table(run.probes)
