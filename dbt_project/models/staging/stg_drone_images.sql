-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Ingested photos, one per position and date, typed; `is_readable` when it decoded.
select
    cast(position_id as text) as position_id,
    cast(date as date) as date,
    cast(image_uri as text) as image_uri,
    cast(size_bytes as bigint) as size_bytes,
    cast(sha256 as text) as sha256,
    cast(width as integer) as width,
    cast(height as integer) as height,
    cast(error as text) as error,
    case when error is null then true else false end as is_readable,
    cast(ingested_at as timestamp with time zone) as ingested_at,
    cast(generation as text) as generation,
    cast(message_id as text) as message_id,
    cast(published_at as timestamp with time zone) as published_at,
    cast(dagster_run_id as text) as dagster_run_id
from {{ source('farm', 'drone_images') }}
