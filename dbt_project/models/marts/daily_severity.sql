-- Severity per date × area × disease over the active grades. Incremental: each build
-- replaces the dates int_changed_days names (macros/incremental_days.sql).
{{ incremental_by_day() }}
with grades as (
    select
        grades.date,
        positions.area,
        grades.disease_type,
        grades.position_id,
        grades.predicted_grade
    from {{ ref('stg_active_disease_grades') }} as grades
    inner join {{ ref('stg_positions') }} as positions
        on positions.position_id = grades.position_id
    where {{ changed_days_filter('grades.date') }}
)

select
    date,
    area,
    disease_type,
    count(distinct position_id) as images,
    count(*) as leaves,
    avg(cast(predicted_grade as double precision)) as mean_grade,
    cast(sum(case when predicted_grade = 0 then 1 else 0 end) as double precision)
        / count(*) as share_healthy,
    cast(sum(case when predicted_grade = {{ var('max_grade') }} then 1 else 0 end)
        as double precision) / count(*) as share_severe
from grades
group by date, area, disease_type
