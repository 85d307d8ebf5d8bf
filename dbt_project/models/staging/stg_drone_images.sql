-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Ingested photos, one per position and date, typed; `is_readable` when it decoded.
select
    {{ typed_columns('farm', 'drone_images') }},
    case when error is null then true else false end as is_readable
from {{ source('farm', 'drone_images') }}
