"""Reading and replaying `drone_image.dead` (DESIGN.md: dead letters can be replayed).

A dead letter carries the original message's data and attributes plus `error`. Replaying
publishes the original (without `error`) to `drone_image` again, then acknowledges the
dead letter; if its cause is not fixed, the sensor dead-letters it again with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm_platform import settings

ERROR_ATTRIBUTE = "error"
REPLAYED_ATTRIBUTE = "replayed_from_dead_letter"


@dataclass(frozen=True)
class DeadLetter:
    ack_id: str
    message_id: str
    publish_time: str
    data: bytes
    attributes: dict[str, str]

    @property
    def error(self) -> str:
        return self.attributes.get(ERROR_ATTRIBUTE, "")

    def original_attributes(self) -> dict[str, str]:
        return {k: v for k, v in self.attributes.items() if k != ERROR_ATTRIBUTE}


def _pull(subscriber: Any, subscription_path: str, limit: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    while len(letters) < limit:
        response = subscriber.pull(
            request={
                "subscription": subscription_path,
                "max_messages": min(100, limit - len(letters)),
            },
            timeout=5,
        )
        if not response.received_messages:
            break
        letters.extend(
            DeadLetter(
                ack_id=received.ack_id,
                message_id=received.message.message_id,
                publish_time=received.message.publish_time.isoformat(),
                data=bytes(received.message.data),
                attributes=dict(received.message.attributes),
            )
            for received in response.received_messages
        )
    return letters


def _release(subscriber: Any, subscription_path: str, letters: list[DeadLetter]) -> None:
    """Give leased dead letters back at once, so they stay in the queue for the next reader."""
    if letters:
        subscriber.modify_ack_deadline(
            request={
                "subscription": subscription_path,
                "ack_ids": [letter.ack_id for letter in letters],
                "ack_deadline_seconds": 0,
            }
        )


def list_dead_letters(
    project: str,
    subscription: str = settings.DEAD_LETTER_SUBSCRIPTION,
    limit: int = 100,
    subscriber: Any = None,
) -> list[DeadLetter]:
    """Peek at up to `limit` dead letters without consuming them."""
    from google.cloud import pubsub_v1

    subscriber = subscriber or pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    letters = _pull(subscriber, path, limit)
    _release(subscriber, path, letters)
    return letters


def replay_dead_letters(
    project: str,
    subscription: str = settings.DEAD_LETTER_SUBSCRIPTION,
    limit: int = 1000,
    select: Callable[[DeadLetter], bool] = lambda letter: True,
    dry_run: bool = False,
    subscriber: Any = None,
    publisher: Any = None,
) -> list[DeadLetter]:
    """Republish the selected dead letters' originals to `drone_image`; returns them."""
    from google.cloud import pubsub_v1

    subscriber = subscriber or pubsub_v1.SubscriberClient()
    publisher = publisher or pubsub_v1.PublisherClient()
    path = subscriber.subscription_path(project, subscription)
    topic = publisher.topic_path(project, settings.DRONE_IMAGE_TOPIC)
    letters = _pull(subscriber, path, limit)
    chosen = [letter for letter in letters if select(letter)]
    _release(subscriber, path, [letter for letter in letters if letter not in chosen])
    if dry_run:
        _release(subscriber, path, chosen)
        return chosen
    futures = [
        publisher.publish(
            topic,
            letter.data,
            **{**letter.original_attributes(), REPLAYED_ATTRIBUTE: letter.message_id},
        )
        for letter in chosen
    ]
    for future in futures:
        future.result(timeout=30)  # stored on drone_image before the dead letter goes
    if chosen:
        subscriber.acknowledge(
            request={"subscription": path, "ack_ids": [letter.ack_id for letter in chosen]}
        )
    return chosen
