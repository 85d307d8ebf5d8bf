-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Latest outcome of every data-quality check per partition (farm_platform/quality), typed.
select
    cast(position_id as text) as position_id,
    cast(date as date) as date,
    cast(asset as text) as asset,
    cast(check_name as text) as check_name,
    cast(passed as boolean) as passed,
    cast(severity as text) as severity,
    cast(details as text) as details,
    cast(checked_at as timestamp with time zone) as checked_at,
    cast(dagster_run_id as text) as dagster_run_id
from {{ source('farm', 'partition_quality') }}
