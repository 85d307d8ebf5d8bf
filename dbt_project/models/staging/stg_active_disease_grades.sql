-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- The grades the reports use: active grader version on crops of the active cropper version,
-- less the (position, date, disease) held back by a failed blocking data-quality check.
-- One row per (position, date, leaf, disease_type) — a data test enforces it.
select
    grades.position_id,
    grades.date,
    grades.leaf_crop_idx,
    grades.disease_type,
    grades.predicted_grade,
    grades.cropper_model_id,
    grades.cropper_model_version,
    grades.disease_model_id,
    grades.disease_model_version,
    grades.confidence,
    grades.graded_at,
    grades.dagster_run_id
from {{ ref('stg_disease_grades') }} as grades
where grades.is_active and not grades.is_held_back
