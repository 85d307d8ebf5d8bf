-- Mean grade of each position per date and disease (active grades), and its change since
-- the position's own first graded date.
--
-- Incremental. A row depends on its own date and on the position's first graded date, so
-- a build replaces the rows of the changed days and, for every (position, disease) whose
-- first date is on or after the earliest changed day, all of its rows: a late first photo
-- (a new, earlier first date) or a re-graded or removed first day moves that position's
-- whole curve. A pair's first date is before the earliest changed day both before and
-- after the change or on/after it both times, so the old rows' first_date tells which
-- pairs to delete and the new one which to insert.
{{ incremental_by_day(reset_column='first_date') }}
with position_day as (
    -- The active grader version's rows: the grades stg_active_disease_grades keeps.
    select position_id, area, dose_ml_per_sqft, date, disease_type, leaves, mean_grade
    from {{ ref('int_position_day_by_version') }}
    where grader_is_active
),

with_first as (
    -- own_first_day: the baseline rule treatment_effect uses too. Over every row of the
    -- pair (its first day may be long before the changed days); the slice is taken after.
    select
        position_day.*,
        {{ own_first_day(['position_id', 'disease_type']) }}
    from position_day
)

select
    position_id,
    date,
    disease_type,
    area,
    dose_ml_per_sqft,
    leaves,
    mean_grade,
    position_first_date as first_date,
    cast(date - position_first_date as integer) as days_since_first_date,
    change_from_first_day
from with_first
{% if is_incremental() -%}
where {{ in_days_to_rebuild('date') }}
    or position_first_date >= {{ earliest_day_to_rebuild() }}
{%- endif %}
