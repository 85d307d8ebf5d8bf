-- The same leaf (position, date, leaf, cropper version) graded for the same disease by two
-- versions of the same grader: one row per leaf and (earlier, later) version pair.
with versions as (
    -- Versions seen in the grades, ordered by registration (unregistered ones last).
    select
        seen.disease_model_id,
        seen.disease_model_version,
        coalesce(registry.active, false) as active,
        row_number() over (
            partition by seen.disease_model_id
            order by registry.recorded_at nulls last, seen.disease_model_version
        ) as version_order
    from (
        select distinct disease_model_id, disease_model_version
        from {{ ref('stg_disease_grades') }}
    ) as seen
    left join {{ ref('stg_model_versions') }} as registry
        on registry.model_id = seen.disease_model_id
        and registry.version = seen.disease_model_version
),

grades as (
    select
        grades.*,
        versions.version_order,
        versions.active as version_active
    from {{ ref('stg_disease_grades') }} as grades
    inner join versions
        on versions.disease_model_id = grades.disease_model_id
        and versions.disease_model_version = grades.disease_model_version
)

select
    a.disease_type,
    a.disease_model_id,
    a.disease_model_version as version_a,
    b.disease_model_version as version_b,
    a.version_active as version_a_active,
    b.version_active as version_b_active,
    a.position_id,
    a.date,
    a.leaf_crop_idx,
    a.cropper_model_id,
    a.cropper_model_version,
    a.predicted_grade as grade_a,
    b.predicted_grade as grade_b
from grades as a
inner join grades as b
    on b.disease_type = a.disease_type
    and b.disease_model_id = a.disease_model_id
    and b.position_id = a.position_id
    and b.date = a.date
    and b.leaf_crop_idx = a.leaf_crop_idx
    and b.cropper_model_id = a.cropper_model_id
    and b.cropper_model_version = a.cropper_model_version
    and b.version_order > a.version_order
