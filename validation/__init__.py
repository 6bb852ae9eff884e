"""Data gates: Great Expectations suites over the canonical inputs and the training examples."""

from validation.gate import GateFailed, GateFailure, GateReport, GateSuite, enforce, latest_report, run_gate

__all__ = ["GateFailed", "GateFailure", "GateReport", "GateSuite", "enforce", "latest_report", "run_gate"]
