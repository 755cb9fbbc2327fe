"""Discrete-event simulation of a cluster replaying a job trace through the one Scheduler."""

from cplat.sim.run import FaultModel, SimResult, simulate

__all__ = ["FaultModel", "SimResult", "simulate"]
