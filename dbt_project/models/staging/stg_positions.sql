-- The field map (seed `positions`), typed.
select
    cast(position_id as text) as position_id,
    cast(area as text) as area,
    cast(latitude as double precision) as latitude,
    cast(longitude as double precision) as longitude,
    cast(dose_ml_per_sqft as double precision) as dose_ml_per_sqft
from {{ ref('positions') }}
