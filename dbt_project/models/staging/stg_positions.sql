-- The field map (source `positions`, written by the Dagster asset from the field-map
-- file), typed. `block` and `assignment` are optional in the file (DESIGN.md, Field map):
-- a map without them is the founding design, two areas allocated by hand, and gets null
-- blocks and assignment 'allocated'.
select
    cast(position_id as text) as position_id,
    cast(area as text) as area,
    cast(latitude as double precision) as latitude,
    cast(longitude as double precision) as longitude,
    cast(dose_ml_per_sqft as double precision) as dose_ml_per_sqft,
    nullif(trim(cast(block as text)), '') as block,
    -- `randomised:<seed>` or `allocated`.
    coalesce(nullif(split_part(trim(cast(assignment as text)), ':', 1), ''), 'allocated')
        as assignment,
    cast(nullif(split_part(trim(cast(assignment as text)), ':', 2), '') as bigint)
        as randomisation_seed
from {{ source('farm', 'positions') }}
