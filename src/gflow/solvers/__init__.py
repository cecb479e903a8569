"""Solvers for gradient flows, and the policy that picks and configures one.

- `GradientFlowBDF` (the default's stiff method up to `DENSE_HESSIAN_LIMIT` parameters): variable-order
  BDF/NDF steps with a kept eigendecomposition of the Hessian, choosing its own steps (`StepDecision`,
  carried out by `SolverChosenSteps`).
- `GradientFlowKrylovBDF` (the default's stiff method above it): the same steps with matrix-free Newton solves
  (Hessian-vector products, CG or GMRES, preconditioned by kept Lanczos eigenpairs).
- `GradientFlowRosenbrock`: ROS34PW2 Rosenbrock-W steps with a kept eigendecomposition.
- `AbstractGradientFlowSolver`: what a gradient-flow solver tells gflow's driver.
- `SOLVERS`, `default_solver`, `make_solver`: names, the default policy, and tolerances plus
  controller filled in at one place. Any adaptive diffrax solver can be named as well.
- `SWITCHING_SOLVER` (the default): Tsit5 where the flow is not stiff, the BDF where it is, chosen per
  chunk from the signals of `_stiffness.py` (`stability_boundary`, `largest_curvature`, ...).
- `last_step_recorded`: any controller, also carrying its last accepted step and the one it
  proposed next (the stiffness signal of an explicit method).
"""

from ._base import PID_GAINS as PID_GAINS
from ._base import AbstractGradientFlowSolver as AbstractGradientFlowSolver
from ._base import fitted_to_chunk as fitted_to_chunk
from ._base import pid_controller as pid_controller
from ._bdf import BDFInterpolation as BDFInterpolation
from ._bdf import GradientFlowBDF as GradientFlowBDF
from ._chosen_steps import SolverChosenSteps as SolverChosenSteps
from ._chosen_steps import StepDecision as StepDecision
from ._explicit import Tsit5UntilStiff as Tsit5UntilStiff
from ._hessian import hessian_eigenbasis as hessian_eigenbasis
from ._krylov import GradientFlowKrylovBDF as GradientFlowKrylovBDF
from ._last_step import last_step as last_step
from ._last_step import last_step_recorded as last_step_recorded
from ._last_step import proposed_step as proposed_step
from ._policy import DEFAULT_SOLVER as DEFAULT_SOLVER
from ._policy import DENSE_HESSIAN_LIMIT as DENSE_HESSIAN_LIMIT
from ._policy import ENSEMBLE_DEFAULT_SOLVER as ENSEMBLE_DEFAULT_SOLVER
from ._policy import EXPLICIT_MAX_STEPS as EXPLICIT_MAX_STEPS
from ._policy import EXPLICIT_SOLVER as EXPLICIT_SOLVER
from ._policy import SOLVERS as SOLVERS
from ._policy import SWITCHING_SOLVER as SWITCHING_SOLVER
from ._policy import SolverSetup as SolverSetup
from ._policy import check_solver as check_solver
from ._policy import check_solver_name as check_solver_name
from ._policy import default_solver as default_solver
from ._policy import make_solver as make_solver
from ._policy import solver_counters as solver_counters
from ._policy import solver_memory as solver_memory
from ._policy import solver_name as solver_name
from ._policy import stiff_solver as stiff_solver
from ._rosenbrock import GradientFlowRosenbrock as GradientFlowRosenbrock
from ._stiffness import explicit_cheaper as explicit_cheaper
from ._stiffness import implicit_step_cost as implicit_step_cost
from ._stiffness import largest_curvature as largest_curvature
from ._stiffness import stability_boundary as stability_boundary
from ._stiffness import stability_limited as stability_limited
