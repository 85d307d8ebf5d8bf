"""`farm-platform replay`: re-deliver the drone_image messages of a period by seeking.

`drone_image.dagster` keeps acknowledged messages for 7 days (`retain_acked_messages`), so
seeking it to a timestamp marks every message published since then unacknowledged again
and Pub/Sub delivers them anew to the sensor (google-cloud-pubsub `SubscriberClient.seek`).

What happens to them: the sensor recognizes an image by its partition plus the object's
GCS generation and remembers those identities for two days in its cursor. A re-delivered
message for an image it ingested in the last two days is therefore a duplicate: it is
acknowledged and causes no work. Older images, or images whose earlier message was lost,
become work again. Either way no row is duplicated: warehouse writes replace a
partition's rows for the same models (the key includes the model versions).
To re-grade images that were already processed, use `farm-platform backfill` instead:
that is what re-processing is for, and it does not depend on the queue.
"""

from __future__ import annotations

import datetime as dt

from farm_platform import config


def parse_timestamp(value: str) -> dt.datetime:
    """ISO 8601 date or date-time; naive values are UTC."""
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 timestamp (e.g. 2026-06-01T06:00Z)"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def replay(
    project: str, subscription: str = config.DEFAULT_SUBSCRIPTION, *, since: dt.datetime
) -> str:
    """Seek the subscription to `since` (bounded: PubSubUnavailable when Pub/Sub does not
    answer); returns the subscription path."""
    from farm_platform.resources.pubsub import PubSubResource

    pubsub = PubSubResource(project=project, subscription=subscription)
    pubsub.seek(since)
    return pubsub.subscription_path
