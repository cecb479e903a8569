"""The stage table: one Markdown row per event, with its time, uncertainty, strength and meaning."""

from __future__ import annotations

import math

from ._events import Event


def format_time(time: float, uncertainty: float) -> str:
    """`time ± uncertainty` with as many digits as the uncertainty supports (at least 3, at most 7)."""
    if time == 0:
        return "0"
    if uncertainty <= 0 or not math.isfinite(uncertainty):
        return f"{time:.4g}"
    digits = max(3, min(7, int(math.floor(math.log10(abs(time)))) - int(math.floor(math.log10(uncertainty))) + 1))
    return f"{time:.{digits}g} ± {uncertainty:.1g}"


def _describe(e: Event) -> str:
    d = e.details
    if e.kind == "plateau":
        end = " (final; the loss is starting to fall at the end)" if d.get("run_ends_in_drop") else (
            " (final)" if d["final"] else "")
        verdict = f"; {d['verdict']}" if d.get("verdict") else ""
        return f"t in [{d['start']:.3g}, {d['end']:.3g}], loss {d['loss']:.5f}{end}{verdict}"
    if e.kind == "condensation":
        frozen = "frozen" if d["attention_frozen"] else "NOT frozen"
        rank = ("rank one" if d.get("rank_one", True) else
                f"NOT rank one: {d['directions_opened']} directions open together" if d["directions_opened"] > 1
                else f"NOT rank one: stable rank {d['stable_rank_E']:.2f}")
        return (f"{rank}; stable ranks E {d['stable_rank_E']:.3f}, U {d['stable_rank_U']:.3f}; attention {frozen} "
                f"(relative change {d['qk_change']:.2g} against {d['embedding_change']:.3g} for W_E)")
    if e.kind == "focus_onset":
        return f"focus index {d['focus_index']:.3g}, max |score| {d['max_score']:.3g}"
    if e.kind == "focus_peak":
        names = d.get("labels") or [str(b) for b in d["gained_tokens"]]
        toks = ", ".join(f"{name} (rank {r}, +{g:.3f})" for name, r, g in zip(names, d["frequency_ranks"], d["gains"],
                                                                                strict=True))
        if not toks:
            toks = "no key token gains over 1% of the attention (the focus is on query-dependent keys)"
        order = "the most frequent tokens" if d["frequency_ordered"] else "not the most frequent tokens"
        where = f" (seen in {d['seen_in']})" if d.get("seen_in") else ""
        return f"F = {d['focus_index']:.3f}; gained: {toks}; {order}{where}" + (" (settles)" if d["final"] else "") \
            + _symmetry(d)
    if e.kind == "dilution":
        what = (f"gain of {d['seen_in']} -{100 * d['fall_fraction']:.0f}%" if d.get("seen_in") else
                f"F {d['peak_focus_index']:.3f} -> {d['focus_index']:.3f} (-{100 * d['fall_fraction']:.0f}%)")
        tokens = ", ".join(d.get("focused_labels") or [str(b) for b in d["focused_tokens"]])
        return (f"{what}; mass of {{{tokens}}}: {d['focused_mass_at_peak']:.3f} -> "
                f"{d['focused_mass']:.3f}") + _symmetry(d)
    if e.kind == "escape":
        opened = ", ".join(f"direction {o['direction']} ({o['from']:.2g} -> {o['to']:.3g})" for o in d["opened"])
        what = f"opens {opened}" if opened else "no new direction"
        total, stage = d["fraction_of_total_drop"], d.get("fraction_of_stage_drop", d["fraction_of_total_drop"])
        share = f"{100 * total:.0f}% of the total drop" + (
            f", {100 * stage:.0f}% of the drop after the first escape" if stage != total else "")
        return f"loss {d['loss_before']:.5f} -> {d['loss_after']:.5f} ({share}); {what}"
    if e.kind == "opening":
        return f"direction {d['direction']} opens without a loss drop ({d['from']:.2g} -> {d['to']:.3g})"
    if e.kind == "block_acquired":
        bottom = (f"bottoms out at {d['kl_min']:.3g} at t = {d['kl_min_time']:.3g}" if d["kl_bottoms_out"] else
                  f"still falling at the end ({d['kl_min']:.3g})")
        cls = d.get("class", f"{{1..{d['block']}}}")
        entered = f"enters class {cls}" + (f" from {d['class_before']}" if d.get("class_before") else "")
        return (f"block {d['block']}: {entered}; levels {d['level_before']:.4f} -> {d['level']:.4f}; nearest "
                f"teacher: {d['nearest_teacher']}; KL to the {cls} teacher {bottom}")
    if e.kind == "competition":
        masses = ", ".join(f"{x:.2f}" for x in d["mass"])
        return f"heads {d['heads']} on block {d['block']} (masses {masses}; uniform {d['share']:.2f})"
    if e.kind == "specialisation":
        now = ", ".join(f"head {h} -> block {k}" for h, k in d["heads_to_blocks"].items())
        end = ", ".join(f"head {h} -> block {k}" for h, k in d["final_heads_to_blocks"].items())
        after = "after competition" if d["after_competition"] else "no competition before"
        shared = f"; block(s) {d['shared_blocks']} still shared" if d["shared_blocks"] else ""
        final = (f" (block(s) {d['shared_at_end']} shared)" if d["shared_at_end"] else " (fully specialised)")
        return f"{now} ({after}{shared}); at the end: {end}{final}"
    if e.kind in ("previous_token_head", "induction_head"):
        return (f"layer {d['layer']}, head {d['head']}: score {d['final_score']:.3f} at the end (uniform attention: "
                f"{d['baseline']:.3f})")
    return str(d)


def stage_table(events: list[Event]) -> str:
    """A Markdown table of the events, one row each, in time order; weak events are marked."""
    if all(e.kind == "plateau" for e in events):
        verdicts = [e.details["verdict"] for e in events if e.details.get("verdict")]
        return ("No stage event: the loss never drops, no direction opens and attention does not focus (the run "
                "stays on its initial plateau)" + (f"; {verdicts[-1]}." if verdicts else "."))
    rows = ["| time | cycle | event | details |", "|---:|---:|---|---|"]
    rows += [f"| {format_time(e.time, e.uncertainty)} | {e.cycle} | {e.kind}{' (weak)' if e.weak else ''} | "
             f"{_describe(e)} |" for e in events]
    return "\n".join(rows)


def _symmetry(d: dict) -> str:
    """"; symmetry breaking with tokens ..." for an event among equally frequent tokens, else ""."""
    if not d.get("symmetry_breaking"):
        return ""
    return "; symmetry breaking with equally frequent token(s) " + ", ".join(str(b) for b in d["equally_frequent_with"])
