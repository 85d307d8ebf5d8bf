-- Mean grade of each position per date and disease (active grades), and its change since
-- the position's own first graded date.
with position_day as (
    select
        grades.position_id,
        positions.area,
        positions.dose_ml_per_sqft,
        grades.date,
        grades.disease_type,
        count(*) as leaves,
        avg(cast(grades.predicted_grade as double precision)) as mean_grade
    from {{ ref('stg_active_disease_grades') }} as grades
    inner join {{ ref('stg_positions') }} as positions
        on positions.position_id = grades.position_id
    group by
        grades.position_id,
        positions.area,
        positions.dose_ml_per_sqft,
        grades.date,
        grades.disease_type
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
