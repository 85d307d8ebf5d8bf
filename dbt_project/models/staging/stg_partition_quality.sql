-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Latest outcome of every data-quality check per partition (farm_platform/quality), typed.
select
    {{ typed_columns('farm', 'partition_quality') }}
from {{ source('farm', 'partition_quality') }}
