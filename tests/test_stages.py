"""Stage detectors: constructed signals with known answers (scale-free rules), event times that do not
depend on the save grid, no event from round-off or from the end of a run, and honest final states."""

import dataclasses

import numpy as np
import pytest

import gflow
from gflow.analysis import Metrics, detect_stages, log_time_slope, open_directions, stable_rank, stage_table
from gflow.analysis._signals import peaks

PI = np.array([0.75, 0.19, 0.05, 0.01])


def synthetic_metrics(times, loss, sv_E, focus=None, key_mass=None, qk_change=None):
    n = len(times)
    sv_E = np.asarray(sv_E, dtype=float)
    return Metrics(times=times, pi=PI, sv_E=sv_E, sv_U=sv_E.copy(), sv_EU=sv_E**2, stable_rank_E=stable_rank(sv_E),
                   stable_rank_U=stable_rank(sv_E), open_directions=open_directions(sv_E),
                   max_score=np.zeros(n), qk_change=np.zeros(n) if qk_change is None else qk_change,
                   key_mass=key_mass, focus=focus, attention=None, position_attention=None, loss=np.asarray(loss),
                   grad_norm=flow_speed(times, loss), dloss_dlogt=log_time_slope(times, np.asarray(loss)))


def flow_speed(times, loss):
    """The gradient norm a gradient flow with this loss curve has: $|\\nabla L|^2 = -dL/dt$."""
    return np.sqrt(np.maximum(-np.gradient(np.asarray(loss, dtype=float), np.asarray(times, dtype=float)), 0.0))


def grid(per_decade=40):
    return np.concatenate([[0.0], np.logspace(-1, 4, 5 * per_decade + 1)])


def step(t, at, width=0.05):
    """A smooth unit step at t = `at`, `width` decades wide."""
    return 0.5 * (1 + np.tanh((np.log10(np.maximum(t, 1e-1)) - np.log10(at)) / width))


def test_peaks_need_a_dip_between_them_and_a_fall_to_be_confirmed():
    x = np.array([0, 1, 5, 1, 0.5, 3, 2.0, 0, 4, 3.9, 3.8])
    found = peaks(x, 0.5)
    assert [p.index for p in found] == [2, 5, 8]
    assert found[0].confirmed and found[1].confirmed and not found[2].confirmed_right
    assert [p.index for p in peaks(np.array([0, 5, 3, 4, 0]), 0.5)] == [1]  # 4 is a shoulder: no dip below 2.5


def test_a_staircase_of_drops_gives_one_escape_per_step():
    """Four loss drops, each opening one direction: four escapes, each timed at its half-way point and
    owning its direction (before, a staircase was reported as one escape with 'rank +3')."""
    t = grid()
    times = [30.0, 100.0, 300.0, 1000.0]
    loss = 1.0 - sum(0.1 * step(t, a) for a in times)
    sv = np.stack([1e-3 + step(t, a) for a in times] + [np.full_like(t, 1e-3)], axis=1)
    events = detect_stages(synthetic_metrics(t, loss, sv))
    escapes = [e for e in events if e.kind == "escape"]
    assert [e.time for e in escapes] == pytest.approx(times, rel=2e-3)
    assert [e.details["rank_increment"] for e in escapes] == [1, 1, 1, 1]
    assert [e.cycle for e in escapes] == [1, 2, 3, 4]
    assert all(e.strength == pytest.approx(0.1, rel=0.05) and not e.weak for e in escapes)  # tails excluded
    assert sum(e.kind == "plateau" for e in events) == 5
    plateaus = [e for e in events if e.kind == "plateau"]
    assert [plateaus[e.details["from_plateau"]].details["next_escape"] for e in escapes] == [e.time for e in escapes]


def test_a_run_that_starts_falling_has_no_plateau_before_its_first_escape():
    """No slow start (the loss falls fastest at t = 0): the first escape comes from no plateau, and the
    later ones name the plateau before them (they named the one after them)."""
    t = grid()
    loss = 1.0 - 0.3 * (1 - np.exp(-t / 0.3)) - 0.1 * step(t, 100.0) - 0.1 * step(t, 1000.0)
    sv = np.stack([1e-3 + step(t, 100.0), 1e-3 + step(t, 1000.0), np.full_like(t, 1e-3)], axis=1)
    events = detect_stages(synthetic_metrics(t, loss, sv))
    escapes, plateaus = ([e for e in events if e.kind == kind] for kind in ("escape", "plateau"))
    assert [e.details["from_plateau"] for e in escapes] == [None, 0, 1] and len(plateaus) == 3
    assert plateaus[0].time > escapes[0].time
    assert [plateaus[e.details["from_plateau"]].details["next_escape"] for e in escapes[1:]] == pytest.approx(
        [e.time for e in escapes[1:]])


def test_a_drop_right_after_another_names_the_plateau_before_both():
    """Drops at 200 and 400, a decade wide, meet with no plateau between them: the second escape names
    the last plateau before it (it had no plateau, `None`, which only a run that starts falling has)."""
    t = grid()
    times = [20.0, 200.0, 400.0, 3000.0]
    loss = 1.0 - sum(0.1 * step(t, a, width=0.1) for a in times)
    sv = np.stack([1e-3 + step(t, a, width=0.1) for a in times] + [np.full_like(t, 1e-3)], axis=1)
    events = detect_stages(synthetic_metrics(t, loss, sv))
    escapes, plateaus = ([e for e in events if e.kind == kind] for kind in ("escape", "plateau"))
    assert len(escapes) == 4 and escapes[2].details["start"] == escapes[1].details["end"]  # back to back
    assert [e.details["from_plateau"] for e in escapes] == [0, 1, 1, 2]
    assert all(plateaus[e.details["from_plateau"]].details["end"] <= e.details["start"] for e in escapes)


def test_a_drop_under_way_at_the_end_or_of_round_off_size_is_no_escape():
    t = grid()
    drop = 1.0 - 0.3 * step(t, 1e4, width=0.3)  # half-way exactly at the end of the run
    assert [e.kind for e in detect_stages(synthetic_metrics(t, drop, np.full((len(t), 2), 1e-3)))] == ["plateau"]
    noise = 1.0 - 1e-15 * step(t, 100.0)
    assert [e.kind for e in detect_stages(synthetic_metrics(t, noise, np.full((len(t), 2), 1e-3)))] == ["plateau"]
    assert stage_table(detect_stages(synthetic_metrics(t, noise, np.full((len(t), 2), 1e-3)))).startswith(
        "No stage event")


def test_small_drops_are_found_and_weak_is_measured_on_the_stages_own_scale():
    t = grid()
    # condensation releases 0.9; the staircase after it 0.005 + 0.005 + 2e-5: its steps are 0.5% of
    # the run's total drop (the old rule called them weak) but half of what is left after condensation
    loss = 1.0 - 0.9 * step(t, 3.0) - 0.005 * step(t, 40.0) - 0.005 * step(t, 400.0) - 2e-5 * step(t, 4000.0)
    escapes = [e for e in detect_stages(synthetic_metrics(t, loss, np.full((len(t), 2), 1e-3))) if e.kind == "escape"]
    assert [e.weak for e in escapes] == [False, False, False, True]
    assert escapes[1].details["fraction_of_stage_drop"] == pytest.approx(0.005 / 0.01002, rel=0.02)


def focus_metrics(t, F, masses):
    n = len(t)
    return synthetic_metrics(t, np.ones(n), np.full((n, 3), 1e-3), focus=F, key_mass=masses[:, None, :])


@pytest.mark.parametrize("fall", [0.17, 0.4])
def test_focus_peak_and_dilution_for_falls_well_below_the_old_30_percent(fall):
    t = grid()
    F = 0.72 * step(t, 10.0) * (1 - fall * step(t, 300.0)) * (1 + 0.5 * step(t, 3000.0, width=0.1))
    masses = np.tile(PI, (len(t), 1))
    masses[:, 0] += 0.1 * step(t, 10.0) * (1 - step(t, 300.0))
    masses[:, 1] -= masses[:, 0] - PI[0]
    events = {e.kind: e for e in detect_stages(focus_metrics(t, F, masses)) if not e.details.get("final")}
    peak, dilution, onset = events["focus_peak"], events["dilution"], events["focus_onset"]
    assert 30 < peak.time < 300 and dilution.time == pytest.approx(300.0, rel=0.05)
    assert dilution.details["fall_fraction"] == pytest.approx(fall, rel=0.05) and not dilution.weak
    assert onset.time < 10.0 and peak.details["gained_tokens"] == [0] and peak.details["frequency_ordered"]


def test_a_dilution_that_moves_no_attention_mass_is_weak_and_frequency_order_means_the_top_tokens():
    t = grid()
    F = 0.3 * step(t, 10.0) * (1 - 0.2 * step(t, 300.0))
    masses = np.tile(PI, (len(t), 1))
    masses[:, 1] += 0.05 * step(t, 10.0)  # gains on the tokens of frequency ranks 2 and 4
    masses[:, 3] += 0.03 * step(t, 10.0)
    masses[:, 0] -= 0.08 * step(t, 10.0)
    events = {e.kind: e for e in detect_stages(focus_metrics(t, F, masses))}
    assert events["focus_peak"].details["frequency_ranks"] == [2, 4]
    assert not events["focus_peak"].details["frequency_ordered"]
    assert events["dilution"].weak and events["dilution"].details["focused_mass"] == pytest.approx(
        events["dilution"].details["focused_mass_at_peak"])


def test_a_focus_that_only_rises_is_reported_when_it_settles_not_at_the_end_of_the_run():
    t = grid()
    F = 0.5 * step(t, 100.0, width=0.1)
    masses = np.tile(PI, (len(t), 1))
    (peak,) = [e for e in detect_stages(focus_metrics(t, F, masses)) if e.kind == "focus_peak"]
    assert peak.details["final"] and peak.time < 200 < t[-1]


def test_round_off_focus_gives_no_focus_event():
    t = grid()
    F = 2e-16 * np.sin(np.arange(len(t)))
    assert all(e.kind == "plateau" for e in detect_stages(focus_metrics(t, F, np.tile(PI, (len(t), 1)))))


# ------------------------------------------------------------------------------------------------
# real flows


@pytest.fixture(scope="module")
def short_flows():
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=4)
    config = gflow.TransformerConfig(d_model=4)
    p0 = gflow.init_params(0, config, spec, scale=1e-3)
    return {n: gflow.simulate(p0, spec, (0, 400.0), config=config, loss="meanfield", n_save=n, progress=False)
            for n in (61, 121, 241)}


def test_event_times_do_not_depend_on_the_save_grid(short_flows):
    """Times come from the re-solved flow between saved points: on grids of 61, 121 and 241 points the
    same events land within 1e-4 (relative) of each other, far inside a save interval (about 10%), and
    within their stated uncertainties."""
    found = {n: [(e.kind, e.time, e.uncertainty) for e in detect_stages(traj) if e.kind != "plateau"]
             for n, traj in short_flows.items()}
    kinds = [k for k, _, _ in found[241]]
    assert kinds == [k for k, _, _ in found[61]] == [k for k, _, _ in found[121]]
    assert {"condensation", "escape", "focus_onset"} <= set(kinds)
    for (_, a, ua), (_, b, ub), (_, c, uc) in zip(found[61], found[121], found[241], strict=True):
        assert b == pytest.approx(a, rel=1e-4) and c == pytest.approx(a, rel=1e-4)
        assert abs(a - c) <= ua + uc and abs(b - c) <= ub + uc and ua < 5e-3 * a


def test_condensation_comes_with_the_first_escape_and_frozen_attention(short_flows):
    events = detect_stages(short_flows[121])
    kinds = [e.kind for e in events]
    cond = events[kinds.index("condensation")]
    first_escape = events[kinds.index("escape")]
    assert cond.time == first_escape.time and cond.details["attention_frozen"]
    assert cond.details["stable_rank_E"] < 1.05 and kinds.index("condensation") < kinds.index("focus_onset")


def test_a_run_that_ends_on_its_first_saddle_says_so():
    """`gflow run` with t_end = 2 reported an 'escape' from 1.38629 to 1.38628 and drew round-off as a
    focus index; the run only sits on the saddle at the origin."""
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    traj = gflow.simulate(gflow.init_params(0, config, spec, scale=1e-3), spec, (0, 2.0), config=config,
                          loss="meanfield", n_save=41, progress=False)
    events = detect_stages(traj)
    assert [e.kind for e in events] == ["plateau"]
    d = events[0].details
    assert d["saddle_index"] > 0 and d["predicted_escape"] > 2.0 and "stuck at a saddle" in d["verdict"]
    assert "No stage event" in stage_table(events) and "stuck at a saddle" in stage_table(events)


def test_a_run_stopped_by_its_solver_is_not_called_stuck_at_a_saddle():
    """A full-block run that failed while escaping was reported "stuck at a saddle of index 28 ...
    predicts an escape near t = 2.72", beside a linearisation table that made no prediction."""
    spec = gflow.MarkovSpec.sticky((0.75, 0.19, 0.05, 0.01), 0.5, T=10)
    config = gflow.TransformerConfig(d_model=8)
    traj = gflow.simulate(gflow.init_params(0, config, spec, scale=1e-3), spec, (0, 2.0), config=config,
                          loss="meanfield", n_save=41, progress=False)  # the run above: its compiled solve
    traj = dataclasses.replace(traj, status="max_steps", message="stopped at t = 2: ...")
    final = detect_stages(traj)[-1]
    assert final.details["final"] and "the run stopped here (max_steps" in final.details["verdict"]
    assert "stuck" not in stage_table([final])


def test_a_drift_below_the_runs_tolerance_is_not_an_escape():
    """A permutation-like chain from init scale 1e-2 sits on its first plateau: the loss drifts down by
    8.5e-9 nats on 1.61 by t = 3e4, far below what a run at rtol 1e-6 resolves. That drift is no
    escape (it was reported as one, "100% of the total drop"); the run stays on its initial plateau."""
    V = 5
    P = 0.7 * np.roll(np.eye(V), 2, axis=1) + 0.3 / V
    spec = gflow.MarkovSpec.from_matrix(P, T=8)
    config = gflow.TransformerConfig(d_model=6)
    traj = gflow.simulate(gflow.init_params(1, config, spec, scale=1e-2), spec, (0.0, 3e4), config=config,
                          loss="meanfield", progress=False)
    assert 0 < traj.loss[0] - traj.loss.min() < 1e-6 * traj.loss[0]
    events = gflow.analysis.detect_stages(traj)
    assert [e.kind for e in events] == ["plateau"], [(e.kind, e.time) for e in events]


def test_a_key_tokens_spike_under_a_wide_focus_peak_is_still_a_focus_and_a_dilution():
    # token 1's mass spikes at t ~ 100 while F rises slowly to one broad peak near t = 3000, whose
    # base reaches back over the spike: the spike is its own focus (the old rule hid it)
    t = grid()
    F = 0.6 * step(t, 30.0, width=0.3) * (1 - 0.5 * step(t, 5000.0, width=0.1))
    masses = np.tile(PI, (len(t), 1))
    spike = 0.15 * step(t, 60.0) * (1 - step(t, 200.0))
    masses[:, 1] += spike
    masses[:, 0] -= spike
    events = detect_stages(focus_metrics(t, F, masses))
    token = [e for e in events if e.details.get("seen_in", "").endswith("token 1")]
    assert [e.kind for e in token] == ["focus_peak", "dilution"]
    assert 60 < token[0].time < 200 and token[1].time == pytest.approx(200.0, rel=0.1)
    assert any(e.kind == "focus_peak" and "seen_in" not in e.details and e.time > 200 for e in events)  # F's own


def test_one_of_two_equally_frequent_tokens_losing_its_mass_is_labelled_symmetry_breaking():
    import dataclasses

    pi = np.array([0.4, 0.4, 0.15, 0.05])
    t = grid()
    masses = np.tile(pi, (len(t), 1))
    rise = 0.1 * step(t, 50.0)
    split = 0.35 * step(t, 1000.0)
    masses[:, 0] += rise + split  # both top tokens gain together, then token 0 takes token 1's share
    masses[:, 1] += rise - split
    masses[:, 2] -= 2 * rise
    F = 0.8 * step(t, 50.0) + 0.4 * step(t, 1000.0)
    m = dataclasses.replace(focus_metrics(t, F, masses), pi=pi)
    broken = [e for e in detect_stages(m) if e.details.get("symmetry_breaking")]
    assert [e.kind for e in broken] == ["focus_peak", "dilution"]
    assert broken[0].details["gained_tokens"] == [1] and broken[0].details["equally_frequent_with"] == [0]
    assert broken[1].time == pytest.approx(1000.0, rel=0.1)


def test_a_condensation_that_opens_two_directions_is_not_called_rank_one():
    # the first drop grows sigma_1 to 1 and sigma_2 to 0.3 at once (as finite-T losses do): the stable
    # rank stays 1.09, which the old row reported as rank one; the openings say two directions
    t = grid()
    loss = 1.0 - 0.5 * step(t, 20.0) - 0.1 * step(t, 500.0)
    sv = np.stack([1e-3 + step(t, 20.0), 1e-3 + 0.3 * step(t, 20.0), 1e-3 + 0.5 * step(t, 500.0),
                   np.full_like(t, 1e-3)], axis=1)
    condensation = next(e for e in detect_stages(synthetic_metrics(t, loss, sv)) if e.kind == "condensation")
    assert condensation.details["stable_rank_E"] < 1.5
    assert condensation.details["directions_opened"] == 2 and not condensation.details["rank_one"]
    assert condensation.weak and "NOT rank one" in stage_table([condensation])


def test_a_loss_that_falls_fastest_at_the_start_has_no_initial_plateau():
    """A full block whose LayerNorm makes the first gradient the run's largest was reported on a
    'plateau' over [0, t_1]: on a log grid the descent rate t |dL/dt| vanishes at t = 0 anyway. The
    stretch before the first drop is a plateau only where |dL/dt| falls below a tenth of the drop's."""
    t = grid()
    fast = 1.0 - 0.3 * (1.0 - np.exp(-t / 1.0))  # the loss's speed is largest at t = 0
    kinds = [e.kind for e in detect_stages(synthetic_metrics(t, fast, np.full((len(t), 2), 1e-3)))]
    assert kinds == ["escape", "plateau"]
    slow = 1.0 - 0.3 * step(t, 1.0)  # flat first, then the drop: the saddle's plateau stays
    kinds = [e.kind for e in detect_stages(synthetic_metrics(t, slow, np.full((len(t), 2), 1e-3)))]
    assert kinds == ["plateau", "escape", "plateau"]
