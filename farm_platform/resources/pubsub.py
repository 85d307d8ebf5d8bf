"""Pub/Sub access for the sensor and the dead-letter tools (docs/contracts.md, Messages)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from farm_platform import config

# Pub/Sub caps one acknowledge / modifyAckDeadline request; stay well below it.
_ACK_CHUNK = 1000
# The client's default retry waits up to 60 s for an unreachable server (a sensor tick
# measured 40 s per call during an emulator restart); every call here gives up sooner.
CALL_DEADLINE_SECONDS = 10.0


class PubSubUnavailable(RuntimeError):
    """Pub/Sub did not answer, or the subscription or topic is missing; the message says
    which and what to do. Nothing was acknowledged by the failed call."""


def _bounded_retry(deadline: float) -> Any:
    from google.api_core import exceptions
    from google.api_core.retry import Retry, if_exception_type

    return Retry(
        predicate=if_exception_type(exceptions.ServiceUnavailable, exceptions.InternalServerError),
        initial=0.2,
        maximum=2.0,
        multiplier=2.0,
        timeout=deadline,
    )


@dataclass(frozen=True)
class PulledMessage:
    ack_id: str
    message_id: str
    publish_time: str
    data: bytes
    attributes: dict[str, str]

    def to_config(self) -> dict[str, Any]:
        """A JSON-safe copy, so a run can dead-letter the original message later."""
        return {
            "message_id": self.message_id,
            "publish_time": self.publish_time,
            "data_b64": base64.b64encode(self.data).decode(),
            "attributes": dict(self.attributes),
        }


class PubSubResource(ConfigurableResource):
    """The `drone_image` subscription and the `drone_image.dead` dead-letter topic."""

    project: str = Field(description="Google Cloud project of the topics")
    subscription: str = Field(default=config.DEFAULT_SUBSCRIPTION)
    dead_letter_topic: str = Field(default=config.DEAD_LETTER_TOPIC)
    _subscriber: Any = PrivateAttr(default=None)
    _publisher: Any = PrivateAttr(default=None)

    @property
    def subscriber(self) -> Any:
        if self._subscriber is None:
            import os

            from google.cloud import pubsub_v1

            emulator = os.environ.get(config.PUBSUB_EMULATOR_HOST)
            self._subscriber = (
                emulator_subscriber(emulator) if emulator else pubsub_v1.SubscriberClient()
            )
        return self._subscriber

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def _call(self, method: str, request: dict[str, Any], deadline: float) -> Any:
        """One subscriber call with a bounded retry; PubSubUnavailable when it cannot land."""
        from google.api_core import exceptions

        try:
            return getattr(self.subscriber, method)(
                request=request, retry=_bounded_retry(deadline), timeout=deadline
            )
        except exceptions.NotFound as exc:
            raise PubSubUnavailable(
                f"{self.subscription_path} does not exist ({exc.message}). Create the "
                "subscription; on the local stack `farm-platform stack up` re-creates it."
            ) from exc
        except (exceptions.RetryError, exceptions.ServiceUnavailable) as exc:
            raise PubSubUnavailable(
                f"Pub/Sub did not answer {method} on {self.subscription_path} within "
                f"{deadline:.0f} s ({getattr(exc, 'message', exc)}). Check that Pub/Sub (or "
                f"the emulator at ${config.PUBSUB_EMULATOR_HOST}) is up."
            ) from exc

    def seek(self, since: Any, timeout_seconds: float = 10.0) -> None:
        """Seek the subscription to `since` (an aware datetime): messages published since
        then are delivered again."""
        import datetime as dt

        from google.api_core import exceptions
        from google.protobuf import timestamp_pb2

        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(since.astimezone(dt.UTC).replace(tzinfo=None))
        try:
            self._call(
                "seek", {"subscription": self.subscription_path, "time": stamp}, timeout_seconds
            )
        except exceptions.DeadlineExceeded as exc:
            raise PubSubUnavailable(
                f"Pub/Sub did not answer seek on {self.subscription_path} within "
                f"{timeout_seconds:.0f} s. Check that Pub/Sub (or the emulator at "
                f"${config.PUBSUB_EMULATOR_HOST}) is up."
            ) from exc

    def pull(self, max_messages: int, timeout_seconds: float = 5.0) -> list[PulledMessage]:
        """One synchronous pull; an empty list when nothing is waiting."""
        from google.api_core import exceptions

        try:
            response = self._call(
                "pull",
                {"subscription": self.subscription_path, "max_messages": max_messages},
                timeout_seconds,
            )
        except exceptions.DeadlineExceeded:
            return []
        return [
            PulledMessage(
                ack_id=received.ack_id,
                message_id=received.message.message_id,
                publish_time=received.message.publish_time.isoformat(),
                data=bytes(received.message.data),
                attributes=dict(received.message.attributes),
            )
            for received in response.received_messages
        ]

    def acknowledge(self, ack_ids: Sequence[str]) -> None:
        for chunk in _chunks(ack_ids):
            self._call(
                "acknowledge",
                {"subscription": self.subscription_path, "ack_ids": chunk},
                CALL_DEADLINE_SECONDS,
            )

    def extend_deadline(self, ack_ids: Sequence[str], seconds: int) -> None:
        for chunk in _chunks(ack_ids):
            self._call(
                "modify_ack_deadline",
                {
                    "subscription": self.subscription_path,
                    "ack_ids": chunk,
                    "ack_deadline_seconds": seconds,
                },
                CALL_DEADLINE_SECONDS,
            )

    def publish(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]], timeout: float = 30.0
    ) -> list[str]:
        """Publish (data, attributes) pairs to a topic and wait until Pub/Sub stored them all.

        Raises if any publish fails, so a caller never acknowledges what was not stored.
        """
        path = self.topic_path(topic)
        futures = [self.publisher.publish(path, data, **dict(attrs)) for data, attrs in messages]
        return [future.result(timeout=timeout) for future in futures]

    def dead_letter(self, messages: Sequence[tuple[bytes, Mapping[str, str], str]]) -> list[str]:
        """Publish (data, attributes, error) triples to the dead-letter topic; their ids."""
        return self.publish(
            self.dead_letter_topic,
            [
                (data, {**dict(attributes), "error": cut_to_bytes(error, 1024)})
                for data, attributes, error in messages
            ],
        )


# What the client library sets on its channel to the real service (no 4 MB cap on a pull
# response: a message may be up to 10 MB).
UNLIMITED_MESSAGE_SIZE = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


def emulator_subscriber(host: str) -> Any:
    """A SubscriberClient on an emulator, its channel configured like production's."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=UNLIMITED_MESSAGE_SIZE)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def cut_to_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (Pub/Sub limits attribute values in bytes),
    never inside a character."""
    return text.encode()[:limit].decode(errors="ignore")


def _chunks(items: Sequence[str]) -> list[list[str]]:
    items = list(items)
    return [items[start : start + _ACK_CHUNK] for start in range(0, len(items), _ACK_CHUNK)]
