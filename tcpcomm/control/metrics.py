"""
Prometheus metrics, read from the hub's running totals when scraped, so the
message path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tcpcomm.client import ClientStatus
from tcpcomm.drain import Drain
from tcpcomm.hub.hub import Hub
from tcpcomm.hub.queues import Queues

if TYPE_CHECKING:
    from tcpcomm.fleet.backplane import Backplane
    from tcpcomm.reload import ReloadStatus


class ReloadCollector(Collector):
    """
    The last reload's result and time, named as Prometheus names its own
    (the start counts as the first load).
    """

    def __init__(self, reloads: ReloadStatus) -> None:
        self._reloads = reloads

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tcpcomm_config_last_reload_success",
            "1 if the last load of the settings (the start, or a SIGHUP reload) worked, else 0.",
            value=1 if self._reloads.ok else 0,
        )
        yield GaugeMetricFamily(
            "tcpcomm_config_last_reload_timestamp_seconds",
            "When the settings were last loaded (or a reload failed), in seconds since the epoch.",
            value=self._reloads.time,
        )


class DrainCollector(Collector):
    """
    Whether the server is draining, and how many clients the drain closed.
    """

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tcpcomm_draining",
            "1 while the server drains (POST /drain), else 0.",
            value=1 if self._drain.draining else 0,
        )
        yield CounterMetricFamily(
            "tcpcomm_drain_closed",
            "Clients the drain has closed.",
            value=self._drain.closed,
        )


class HubCollector(Collector):
    """
    The hub's totals (and the client's connection state) as metrics.
    """

    def __init__(self, hub: Hub, status: ClientStatus | None = None) -> None:
        self._hub = hub
        self._status = status

    def collect(self) -> Iterator[Metric]:
        stats = self._hub.stats
        yield GaugeMetricFamily(
            "tcpcomm_connections", "Connections open now.", value=len(self._hub.registry)
        )
        for name, documentation, value in [
            ("tcpcomm_connections_opened", "Connections made.", stats.connectionsTotal),
            ("tcpcomm_messages_received", "Messages received.", stats.messagesIn),
            ("tcpcomm_messages_sent", "Messages sent (replies included).", stats.messagesOut),
            ("tcpcomm_received_bytes", "Bytes of messages received.", stats.bytesIn),
            ("tcpcomm_sent_bytes", "Bytes of messages sent.", stats.bytesOut),
            ("tcpcomm_decode_errors", "Messages that did not decode.", stats.decodeErrors),
            (
                "tcpcomm_oversize_disconnects",
                "Peers disconnected for a message over --max-message-size.",
                stats.oversized,
            ),
            (
                "tcpcomm_framing_error_disconnects",
                "Peers disconnected for breaking the framing.",
                stats.framingErrors,
            ),
            ("tcpcomm_handler_errors", "Exceptions raised by the handler.", stats.handlerErrors),
            (
                "tcpcomm_slow_consumer_disconnects",
                "Peers disconnected for not reading past --max-pending-bytes.",
                stats.slowConsumers,
            ),
            (
                "tcpcomm_timeout_disconnects",
                "Peers disconnected by --heartbeat-timeout, --idle-timeout or --message-timeout.",
                stats.timeouts,
            ),
            (
                "tcpcomm_refused_connections",
                "Connections refused over --max-connections (or the lower limit the file "
                "descriptors allow).",
                stats.refused,
            ),
            (
                "tcpcomm_handshake_timeout_disconnects",
                "Connections dropped for not finishing their TLS handshake within "
                "--handshake-timeout.",
                stats.handshakeTimeouts,
            ),
            (
                "tcpcomm_handshake_evictions",
                "Connections still in their TLS handshake dropped to make room for a new one at "
                "--max-connections.",
                stats.handshakeEvictions,
            ),
            (
                "tcpcomm_heartbeats_received",
                "Empty messages (heartbeats) received.",
                stats.heartbeatsIn,
            ),
            (
                "tcpcomm_takeovers",
                "Named clients replaced by a newer connection with the same name.",
                stats.takeovers,
            ),
        ]:
            yield CounterMetricFamily(name, documentation, value=value)
        queues = self._hub.queues
        if queues is not None:
            yield from queueMetrics(queues)
        status = self._status
        if status is not None:
            yield GaugeMetricFamily(
                "tcpcomm_client_connected",
                "1 while the client is connected to its server, else 0.",
                value=1 if len(self._hub.registry) else 0,
            )
            yield CounterMetricFamily(
                "tcpcomm_client_reconnects", "Connections after the first.", value=status.reconnects
            )
            yield CounterMetricFamily(
                "tcpcomm_client_failed_attempts",
                "Connection attempts that failed.",
                value=status.failedAttempts,
            )


def queueMetrics(queues: Queues) -> Iterator[Metric]:
    """
    The messages that wait for clients that are away, and what became of
    those that did.
    """
    for name, documentation, value in [
        ("tcpcomm_queue_queued", "Messages queued for a client that was away.", queues.queued),
        (
            "tcpcomm_queue_delivered",
            "Queued messages delivered when their client identified.",
            queues.delivered,
        ),
        ("tcpcomm_queue_expired", "Queued messages dropped unsent at their ttl.", queues.expired),
        (
            "tcpcomm_queue_refused",
            "Sends refused (507) over --queue-max-messages, --queue-max-bytes or "
            "--queue-total-bytes.",
            queues.refused,
        ),
    ]:
        yield CounterMetricFamily(name, documentation, value=value)
    yield GaugeMetricFamily(
        "tcpcomm_queue_waiting_messages",
        "Messages waiting now for clients that are away.",
        value=queues.waitingMessages,
    )
    yield GaugeMetricFamily(
        "tcpcomm_queue_waiting_bytes",
        "Bytes of the messages waiting now.",
        value=queues.waitingBytes,
    )


class BackplaneCollector(Collector):
    """
    The backplane's state, the fleet's size as this node last counted it,
    and the messages and latency of cross-node calls.
    """

    def __init__(self, backplane: Backplane) -> None:
        self._backplane = backplane

    def collect(self) -> Iterator[Metric]:
        backplane = self._backplane
        yield GaugeMetricFamily(
            "tcpcomm_backplane_up",
            "1 while both Redis connections are up and the last probe came back, else 0.",
            value=1 if backplane.up else 0,
        )
        yield GaugeMetricFamily(
            "tcpcomm_fleet_clients",
            "Clients of the whole fleet, as Redis held them at this node's last refresh.",
            value=backplane.fleetClients,
        )
        yield CounterMetricFamily(
            "tcpcomm_backplane_messages_received",
            "Messages from other nodes (sends, disconnects, takeovers...) received.",
            value=backplane.messagesIn,
        )
        yield CounterMetricFamily(
            "tcpcomm_backplane_messages_sent",
            "Messages to other nodes published.",
            value=backplane.messagesOut,
        )
        latency = backplane.latency
        yield HistogramMetricFamily(
            "tcpcomm_backplane_delivery_seconds",
            "Seconds from a cross-node call (a send, a disconnect) to the holding node's reply.",
            buckets=list(latency.cumulative()),
            sum_value=latency.sum,
        )


def makeRegistry(
    hub: Hub,
    status: ClientStatus | None = None,
    reloads: ReloadStatus | None = None,
    drain: Drain | None = None,
    backplane: Backplane | None = None,
) -> CollectorRegistry:
    """
    A registry of this process's metrics: the hub's, the last reload's, the
    server's drain, the backplane's, and the process's own (memory, CPU,
    open files) and Python's.
    """
    registry = CollectorRegistry()
    registry.register(HubCollector(hub, status))
    if backplane is not None:
        registry.register(BackplaneCollector(backplane))
    if reloads is not None:
        registry.register(ReloadCollector(reloads))
    if drain is not None:
        registry.register(DrainCollector(drain))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
