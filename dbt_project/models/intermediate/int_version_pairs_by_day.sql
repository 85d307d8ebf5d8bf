-- Per date: the same leaves (position, leaf, cropper version) graded for the same disease
-- by two versions of the same grader, counted per (earlier, later) version pair and pair
-- of grades. model_version_agreement and model_version_confusion sum it over the dates.
--
-- Cheap by construction: incremental by date (only the changed days are read), and the
-- self-join runs only on the (date, grader) with more than one version that day. With one
-- version per grader (the usual case) the join has no input and the table stays empty.
{{ incremental_by_day() }}
with grades as (
    select
        position_id,
        date,
        leaf_crop_idx,
        disease_type,
        predicted_grade,
        cropper_model_id,
        cropper_model_version,
        disease_model_id,
        disease_model_version
    from {{ ref('stg_disease_grades') }}
    where {{ changed_days_filter('date') }}
),

-- The (date, grader) that more than one version graded.
compared_days as (
    select date, disease_model_id
    from grades
    group by date, disease_model_id
    having count(distinct disease_model_version) > 1
),

-- Registration order decides which version of a pair is `a` (unregistered ones last, by
-- name); the order of two versions does not depend on the others, so ranking the versions
-- of these days is enough.
versions as (
    select
        seen.disease_model_id,
        seen.disease_model_version,
        coalesce(registry.active, false) as active,
        row_number() over (
            partition by seen.disease_model_id
            order by registry.recorded_at nulls last, seen.disease_model_version
        ) as version_order
    from (
        select distinct grades.disease_model_id, grades.disease_model_version
        from grades
        inner join compared_days
            on {{ keys_match('compared_days', 'grades', ['date', 'disease_model_id']) }}
    ) as seen
    {{ left_join_registry('registry', 'seen.disease_model_id', 'seen.disease_model_version') }}
),

compared as (
    select
        grades.*,
        versions.version_order,
        versions.active as version_active
    from grades
    inner join compared_days
        on {{ keys_match('compared_days', 'grades', ['date', 'disease_model_id']) }}
    inner join versions
        on {{ keys_match('versions', 'grades', ['disease_model_id', 'disease_model_version']) }}
)

select
    a.date,
    a.disease_type,
    a.disease_model_id,
    a.disease_model_version as version_a,
    b.disease_model_version as version_b,
    a.version_active as version_a_active,
    b.version_active as version_b_active,
    a.predicted_grade as grade_a,
    b.predicted_grade as grade_b,
    count(*) as n
from compared as a
inner join compared as b
    -- The same leaf (photo, crop, cropper version), disease and grader.
    on {{ keys_match('b', 'a', [
        'disease_type', 'disease_model_id', 'position_id', 'date', 'leaf_crop_idx',
        'cropper_model_id', 'cropper_model_version',
    ]) }}
    and b.version_order > a.version_order
group by
    a.date,
    a.disease_type,
    a.disease_model_id,
    a.disease_model_version,
    b.disease_model_version,
    a.version_active,
    b.version_active,
    a.predicted_grade,
    b.predicted_grade
