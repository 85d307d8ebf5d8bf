-- The grades the reports use: active grader version on crops of the active cropper version.
-- One row per (position, date, leaf, disease_type) — a data test enforces it.
select
    position_id,
    date,
    leaf_crop_idx,
    disease_type,
    predicted_grade,
    cropper_model_id,
    cropper_model_version,
    disease_model_id,
    disease_model_version,
    confidence,
    graded_at,
    dagster_run_id
from {{ ref('stg_disease_grades') }}
where is_active
