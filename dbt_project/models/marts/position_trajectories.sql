-- Mean grade of each position per date and disease (active grades), and its change since
-- the position's own first graded date.
with position_day as (
    -- The active grader version's rows: the grades stg_active_disease_grades keeps.
    select position_id, area, dose_ml_per_sqft, date, disease_type, leaves, mean_grade
    from {{ ref('int_position_day_by_version') }}
    where grader_is_active
),

with_first as (
    -- own_first_day: the baseline rule treatment_effect uses too.
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
