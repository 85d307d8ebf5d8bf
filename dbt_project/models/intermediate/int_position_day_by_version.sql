-- Each position's mean grade per date, disease and grader version, on the crops of the
-- active cropper, less the partitions held back by a failed blocking check. The rows of
-- the active grader versions are position_trajectories' inputs; all of them feed
-- model_version_effects. A table, incremental by date: the marts above it read ~1 row per
-- position, day and disease instead of re-aggregating every grade of the history.
{{ incremental_by_day() }}
{%- set by = [
    'grades.position_id', 'positions.area', 'positions.block', 'positions.dose_ml_per_sqft',
    'grades.date',
    'grades.disease_type', 'grades.disease_model_id', 'grades.disease_model_version',
    'grades.grader_is_active',
] %}
select
    {{ by | join(',\n    ') }},
    count(*) as leaves,
    avg(cast(grades.predicted_grade as double precision)) as mean_grade
from {{ ref('stg_disease_grades') }} as grades
inner join {{ ref('stg_positions') }} as positions
    on positions.position_id = grades.position_id
where grades.cropper_is_active and not grades.is_held_back
    and {{ changed_days_filter('grades.date') }}
group by {{ by | join(', ') }}
