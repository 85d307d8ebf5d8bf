-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- (position, date, disease) held back from every report: an ERROR-severity check failed on
-- that disease's grades, or on the leaf crops all diseases were graded on, or on the photo
-- itself (an unusable photo is never graded: listed here so that it is seen).
-- stg_active_disease_grades leaves these out; the report lists them.
with failures as (
    select position_id, date, asset, check_name, details
    from {{ ref('stg_partition_quality') }}
    where not passed
        and severity = 'ERROR'
        and (asset in ('drone_images', 'leaf_crops') or asset like 'disease_%_grades')
),

diseases as (
    {% for k in range(5) %}
    select 'disease_{{ k }}' as disease_type
    {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

held as (
    select
        failures.position_id,
        failures.date,
        diseases.disease_type,
        failures.asset || '/' || failures.check_name as failed_check
    from failures
    inner join diseases
        on failures.asset in ('drone_images', 'leaf_crops')
        or failures.asset = diseases.disease_type || '_grades'
)

select
    position_id,
    date,
    disease_type,
    string_agg(failed_check, ', ' order by failed_check) as failed_checks
from held
group by position_id, date, disease_type
