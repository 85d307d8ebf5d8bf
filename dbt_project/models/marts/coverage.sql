-- Per date × area: how much of the field map was photographed, readable and graded.
-- Incremental: each build replaces the dates int_changed_days names.
{{ incremental_by_day() }}
with positions as (
    select position_id, area
    from {{ ref('stg_positions') }}
),

dates as (
    select date from {{ ref('stg_drone_images') }}
    where {{ changed_days_filter('date') }}
    union
    select date from {{ ref('stg_leaf_crops') }}
    where {{ changed_days_filter('date') }}
),

images as (
    select position_id, date, is_readable
    from {{ ref('stg_drone_images') }}
    where {{ changed_days_filter('date') }}
),

leaves as (
    select position_id, date, count(*) as leaves
    from {{ ref('stg_leaf_crops') }}
    where is_active and {{ changed_days_filter('date') }}
    group by position_id, date
),

graded as (
    select distinct position_id, date
    from {{ ref('stg_active_disease_grades') }}
    where {{ changed_days_filter('date') }}
),

-- Every position of the field map on every date the farm was flown.
field_days as (
    select dates.date, positions.area, positions.position_id
    from dates
    cross join positions
),

position_day as (
    select
        field_days.date,
        field_days.area,
        field_days.position_id,
        case when images.position_id is not null then 1 else 0 end as photographed,
        case when images.is_readable then 1 else 0 end as readable,
        case when graded.position_id is not null then 1 else 0 end as graded,
        coalesce(leaves.leaves, 0) as leaves
    from field_days
    left join images on {{ keys_match('images', 'field_days', ['position_id', 'date']) }}
    left join leaves on {{ keys_match('leaves', 'field_days', ['position_id', 'date']) }}
    left join graded on {{ keys_match('graded', 'field_days', ['position_id', 'date']) }}
)

select
    date,
    area,
    count(*) as positions_in_field_map,
    sum(photographed) as positions_photographed,
    sum(photographed - readable) as unreadable_images,
    sum(graded) as positions_graded,
    sum(leaves) as leaves,
    sum(1 - readable) as positions_missing,
    string_agg(
        case when readable = 0 then position_id end, ',' order by position_id
    ) as missing_positions
from position_day
group by date, area
