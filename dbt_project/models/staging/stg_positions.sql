-- The field map (seed `positions`), typed. `block` and `assignment` are optional columns
-- (DESIGN.md, revised 2026-12-06): a map without them is the founding design, two areas
-- allocated by hand, and gets null blocks and assignment 'allocated'.
{%- set seed_columns = [] %}
{%- if execute %}
{%- set seed_columns = adapter.get_columns_in_relation(ref('positions'))
    | map(attribute='name') | map('lower') | list %}
{%- endif %}
select
    cast(position_id as text) as position_id,
    cast(area as text) as area,
    cast(latitude as double precision) as latitude,
    cast(longitude as double precision) as longitude,
    cast(dose_ml_per_sqft as double precision) as dose_ml_per_sqft,
    {%- if 'block' in seed_columns %}
    nullif(trim(cast(block as text)), '') as block,
    {%- else %}
    cast(null as text) as block,
    {%- endif %}
    {%- if 'assignment' in seed_columns %}
    -- `randomised:<seed>` or `allocated`.
    coalesce(nullif(split_part(trim(cast(assignment as text)), ':', 1), ''), 'allocated')
        as assignment,
    cast(nullif(split_part(trim(cast(assignment as text)), ':', 2), '') as bigint)
        as randomisation_seed
    {%- else %}
    cast('allocated' as text) as assignment,
    cast(null as bigint) as randomisation_seed
    {%- endif %}
from {{ ref('positions') }}
