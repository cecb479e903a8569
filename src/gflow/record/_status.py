"""Every way a run can end (`RunStatus`), each with its messages, written once.

As diffrax's `RESULTS` holds every outcome of a solve with its message, a `RunStatus` member holds
the sentences that explain it, one per situation it arises in (`describe(situation, **facts)`).
Code compares members, never strings, and nobody else writes these sentences.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    """Every way a run can end (members compare equal to their string values)."""

    SUCCESS = "success", {
        "flow": "integrated to t = {t:.6g}",
        "discrete": "{steps} steps of {optimizer} at lr {lr:g}",
    }
    MAX_STEPS = "max_steps", {
        "flow": "stopped at t = {t:.6g}: a chunk needed more than max_steps = {max_steps} steps. Raise max_steps "
                "(a checkpointed run continues with gflow.resume(path, max_steps=...), a gflow run folder with "
                "`gflow resume DIR --max-steps N`), loosen rtol/atol, or check "
                "the problem's stiffness.",
    }
    NONFINITE = "nonfinite", {
        "flow": "the state became non-finite after t = {t:.6g} (loss overflow or NaN gradient).",
        "start": "the loss or its gradient is not finite at t = {t:.6g} (the state itself is finite): the flow stops "
                 "there; the points up to there are kept.",
        "discrete": "the loss became non-finite by step {step} (lr {lr:g} too large?)",
    }
    SOLVER_FAILURE = "solver_failure", {
        "flow": "the solver failed after t = {t:.6g} (step size underflow or a non-finite vector field; its last "
                "accepted step was {h:.3g}){hint}; the points up to there are kept.",
        "rising": "the loss rose from {before:.6g} to {after:.6g} by t = {t:.6g}, which a gradient flow cannot do: "
                  "the solver's steps were not accurate at rtol {rtol:g}, atol {atol:g}; tighten them (gflow's "
                  "default is 1e-6, 1e-9). The points up to t = {t_ok:.6g} are kept.",
    }
    INTERRUPTED = "interrupted", {
        "flow": "interrupted by the user at t = {t:.6g}; the points computed so far are kept.",
        "checkpointed": "interrupted by the user at t = {t:.6g}; the points computed so far are kept and saved in "
                        "{checkpoint!r} (continue with gflow.resume).",
        "discrete": "interrupted by the user after step {step}",
        "not started": "interrupted by the user before this member started.",
    }
    RUNNING = "running", {  # a checkpoint of a run in progress
        "flow": "checkpoint at t = {t:.6g} of {t_end:.6g}",
    }

    def __new__(cls, value: str, messages: dict[str, str]):
        member = str.__new__(cls, value)
        member._value_ = value
        member.messages = messages
        return member

    def describe(self, situation: str = "flow", **facts) -> str:
        """The message of this outcome in `situation` (a key of `messages`), with `facts` filled in."""
        return self.messages[situation].format(**facts)


STATUSES = tuple(s.value for s in RunStatus)
