-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- All grades of every model version, typed, flagged `is_active` when both the grader
-- version and the cropper version are the ones the model registry names active, and
-- `is_held_back` when a failed blocking data-quality check holds their (position, date,
-- disease) back from the reports.
with grades as (
    select {{ typed_columns('farm', 'disease_grades') }}
    from {{ source('farm', 'disease_grades') }}
)

select
    grades.*,
    coalesce(grader.active, false) as grader_is_active,
    coalesce(cropper.active, false) as cropper_is_active,
    case
        when coalesce(grader.active, false) and coalesce(cropper.active, false) then true
        else false
    end as is_active,
    held.position_id is not null as is_held_back
from grades
{{ left_join_registry('grader', 'grades.disease_model_id', 'grades.disease_model_version') }}
{{ left_join_registry('cropper', 'grades.cropper_model_id', 'grades.cropper_model_version') }}
left join {{ ref('held_back_partitions') }} as held
    on held.position_id = grades.position_id
    and held.date = grades.date
    and held.disease_type = grades.disease_type
