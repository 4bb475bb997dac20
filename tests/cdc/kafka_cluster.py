"""librdkafka's mock cluster: a real Kafka-protocol peer on loopback, in the test's process."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

__all__ = ["MockCluster"]


class MockCluster:
    """Owns a librdkafka mock cluster (`test.mock.num.brokers`); it lives as long as this object,
    so keep it alive while clients (in this process or others, over loopback) use it."""

    def __init__(self, brokers: int = 1) -> None:
        self._owner = AdminClient({"test.mock.num.brokers": brokers, "log_level": 3})
        metadata = self._owner.list_topics(timeout=10)
        self.bootstrap_servers = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())

    def close(self) -> None:
        """End the cluster (once every client of it is closed)."""
        del self._owner
