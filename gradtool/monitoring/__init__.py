"""Monitoring a training loop: a `Monitor` records the gradient analysis of the live losses every
N steps into a run log (JSON lines) that `gradtool report` reads."""

from gradtool.monitoring.monitor import Monitor, flat_metrics

__all__ = ["Monitor", "flat_metrics"]
