"""Reading and replaying `drone_image.dead` (docs/contracts.md: dead letters can be replayed).

A dead letter carries the original message's data and attributes plus `error`. Replaying
publishes the original (without `error`) to `drone_image` again, then acknowledges the
dead letter; if its cause is not fixed, the sensor dead-letters it again with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from farm_platform import config
from farm_platform.resources.pubsub import PubSubResource, PulledMessage

ERROR_ATTRIBUTE = "error"
REPLAYED_ATTRIBUTE = "replayed_from_dead_letter"


def dead_letter_queue(
    project: str, subscription: str = config.DEAD_LETTER_SUBSCRIPTION
) -> PubSubResource:
    return PubSubResource(project=project, subscription=subscription)


def error_of(letter: PulledMessage) -> str:
    return letter.attributes.get(ERROR_ATTRIBUTE, "")


def original_attributes(letter: PulledMessage) -> dict[str, str]:
    return {k: v for k, v in letter.attributes.items() if k != ERROR_ATTRIBUTE}


def _pull_all(queue: PubSubResource, limit: int) -> list[PulledMessage]:
    letters: list[PulledMessage] = []
    while len(letters) < limit:
        batch = queue.pull(min(100, limit - len(letters)))
        if not batch:
            break
        letters.extend(batch)
    return letters


def _release(queue: PubSubResource, letters: list[PulledMessage]) -> None:
    """Give leased dead letters back at once, so they stay queued for the next reader."""
    if letters:
        queue.extend_deadline([letter.ack_id for letter in letters], 0)


def list_dead_letters(queue: PubSubResource, limit: int = 100) -> list[PulledMessage]:
    """Peek at up to `limit` dead letters without consuming them."""
    letters = _pull_all(queue, limit)
    _release(queue, letters)
    return letters


def replay_dead_letters(
    queue: PubSubResource,
    limit: int = 1000,
    select: Callable[[PulledMessage], bool] = lambda letter: True,
    dry_run: bool = False,
) -> list[PulledMessage]:
    """Republish the selected dead letters' originals to `drone_image`; returns them."""
    letters = _pull_all(queue, limit)
    chosen = [letter for letter in letters if select(letter)]
    _release(queue, [letter for letter in letters if letter not in chosen])
    if dry_run:
        _release(queue, chosen)
        return chosen
    queue.publish(
        config.DRONE_IMAGE_TOPIC,
        [
            (letter.data, {**original_attributes(letter), REPLAYED_ATTRIBUTE: letter.message_id})
            for letter in chosen
        ],
    )
    # Stored on drone_image: only now does the dead letter go.
    queue.acknowledge([letter.ack_id for letter in chosen])
    return chosen
