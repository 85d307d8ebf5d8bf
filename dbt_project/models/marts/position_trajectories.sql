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

firsts as (
    select position_id, disease_type, min(date) as first_date
    from position_day
    group by position_id, disease_type
),

with_first as (
    select
        position_day.*,
        firsts.first_date,
        first_day.mean_grade as first_mean_grade
    from position_day
    inner join firsts
        on firsts.position_id = position_day.position_id
        and firsts.disease_type = position_day.disease_type
    inner join position_day as first_day
        on first_day.position_id = firsts.position_id
        and first_day.disease_type = firsts.disease_type
        and first_day.date = firsts.first_date
    {% if is_incremental() -%}
    where {{ in_days_to_rebuild('position_day.date') }}
        or firsts.first_date >= {{ earliest_day_to_rebuild() }}
    {%- endif %}
)

select
    position_id,
    date,
    disease_type,
    area,
    dose_ml_per_sqft,
    leaves,
    mean_grade,
    first_date,
    cast(date - first_date as integer) as days_since_first_date,
    mean_grade - first_mean_grade as change_from_first_day
from with_first
