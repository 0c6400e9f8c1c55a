"""Metrics: the sidecar's instruments and the hooks that feed them.

Counters and histograms are fed where things happen (the rpc interceptor, the servicer, the
engine). Gauges that describe the shared Redis (instances running and waiting, work backlog,
oldest pending work) are read by a sampler every `gauge_interval_s`, so a scrape or an export
never waits on Redis; every sidecar reports the same cluster-wide values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation

logger = logging.getLogger(__name__)

METER_NAME = "okra_sidecar"
# Sub-millisecond to seconds: the rpcs of a sidecar on loopback are fast.
RPC_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
TURN_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
FINISHED = ("completed", "failed", "cancelled")


@dataclass
class ClusterGauges:
    """The last values read from Redis; the observable gauges report them."""

    running: int = 0
    waiting: int = 0
    backlog: dict[int, int] = field(default_factory=dict)  # partition -> entries not done
    oldest_age_s: dict[int, float] = field(default_factory=dict)  # partition -> seconds


GaugeReader = Callable[[], Awaitable[ClusterGauges]]


class SidecarMetrics:
    """Every instrument of the sidecar, behind methods named for what happened."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or NoOpMeterProvider().get_meter(METER_NAME)
        self.gauges = ClusterGauges()
        self._rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="ms",
            description="Duration of inbound rpcs, by method and status code.",
            explicit_bucket_boundaries_advisory=RPC_BUCKETS_MS,
        )
        self._started = meter.create_counter(
            "okra.instances.started", unit="{instance}", description="Instances started."
        )
        self._finished = {
            status: meter.create_counter(
                f"okra.instances.{status}", unit="{instance}", description=f"Instances {status}."
            )
            for status in FINISHED
        }
        self._signals = meter.create_counter(
            "okra.signals.delivered",
            unit="{signal}",
            description="Signals accepted into an inbox (duplicates not counted).",
        )
        self._denials = meter.create_counter(
            "okra.policy.denials", unit="{denial}", description="Calls denied by a policy."
        )
        self._timer_lag = meter.create_histogram(
            "okra.timer.lag",
            unit="s",
            description="How late a timer's turn started after the timer was due.",
            explicit_bucket_boundaries_advisory=LAG_BUCKETS_S,
        )
        self._turn_duration = meter.create_histogram(
            "okra.turn.duration",
            unit="s",
            description="Duration of engine turns (load, interpret, commit), by outcome.",
            explicit_bucket_boundaries_advisory=TURN_BUCKETS_S,
        )
        meter.create_observable_gauge(
            "okra.instances.running",
            callbacks=[self._observe_running],
            unit="{instance}",
            description="Instances running now (in the whole Redis).",
        )
        meter.create_observable_gauge(
            "okra.instances.waiting",
            callbacks=[self._observe_waiting],
            unit="{instance}",
            description="Instances waiting for a signal or a timer (in the whole Redis).",
        )
        meter.create_observable_gauge(
            "okra.work.backlog",
            callbacks=[self._observe_backlog],
            unit="{entry}",
            description="Work-stream entries not yet done, by partition.",
        )
        meter.create_observable_gauge(
            "okra.work.oldest_pending_age",
            callbacks=[self._observe_oldest],
            unit="s",
            description="Age of the oldest work-stream entry not yet done, by partition.",
        )

    # -- hooks ---------------------------------------------------------------------------------

    def rpc_finished(self, duration_ms: float, attributes: dict[str, str | int]) -> None:
        self._rpc_duration.record(duration_ms, attributes)

    def instance_started(self, workflow_id: str) -> None:
        self._started.add(1, {"okra.workflow.id": workflow_id})

    def instance_finished(self, workflow_id: str, status: str) -> None:
        """Count an instance that reached `completed`, `failed` or `cancelled`."""
        counter = self._finished.get(status)
        if counter is not None:
            counter.add(1, {"okra.workflow.id": workflow_id})

    def signal_delivered(self) -> None:
        self._signals.add(1)

    def policy_denied(self, policy: str, method: str = "") -> None:
        """Count a denial; the policy layer may call it directly, the rpc interceptor does for
        denials noted with `tracing.note_policy_denial`."""
        self._denials.add(1, {"okra.policy": policy, "rpc.method": method})

    def timer_fired(self, lag_s: float) -> None:
        self._timer_lag.record(max(lag_s, 0.0))

    def turn_finished(self, duration_s: float, workflow_id: str, outcome: str) -> None:
        self._turn_duration.record(
            duration_s, {"okra.workflow.id": workflow_id, "okra.turn.outcome": outcome}
        )

    # -- gauges --------------------------------------------------------------------------------

    def _observe_running(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.gauges.running)]

    def _observe_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.gauges.waiting)]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"okra.partition": p}) for p, n in self.gauges.backlog.items()]

    def _observe_oldest(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(age, {"okra.partition": p}) for p, age in self.gauges.oldest_age_s.items()
        ]

    async def sample_forever(self, read: GaugeReader, *, interval_s: float) -> None:
        """Refresh the cluster gauges until cancelled; a failed read keeps the last values."""
        while True:
            try:
                self.gauges = await read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("could not read the cluster gauges: %s", exc)
            await asyncio.sleep(interval_s)


__all__ = ["ClusterGauges", "GaugeReader", "SidecarMetrics"]
