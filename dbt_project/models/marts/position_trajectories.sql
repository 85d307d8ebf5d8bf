-- Mean grade of each position per date and disease (active grades), and its change since
-- the position's own first graded date.
with position_day as (
    -- The active grader version's rows: the grades stg_active_disease_grades keeps.
    select position_id, area, dose_ml_per_sqft, date, disease_type, leaves, mean_grade
    from {{ ref('int_position_day_by_version') }}
    where grader_is_active
),

with_first as (
    select
        position_day.*,
        min(date) over (partition by position_id, disease_type) as first_date,
        first_value(mean_grade) over (
            partition by position_id, disease_type
            order by date
            rows between unbounded preceding and unbounded following
        ) as first_mean_grade
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
    first_date,
    cast(date - first_date as integer) as days_since_first_date,
    mean_grade - first_mean_grade as change_from_first_day
from with_first
