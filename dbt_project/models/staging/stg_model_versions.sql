-- Every registered (model_id, version), typed, with its registration order per model.
with versions as (
    select
        cast(model_id as text) as model_id,
        cast(version as text) as version,
        cast(active as boolean) as active,
        cast(task as text) as task,
        cast(disease_type as text) as disease_type,
        cast(sha256 as text) as sha256,
        cast(recorded_at as timestamp with time zone) as recorded_at
    from {{ source('farm', 'model_versions') }}
)

select
    versions.*,
    row_number() over (
        partition by model_id
        order by recorded_at, version
    ) as registration_order
from versions
