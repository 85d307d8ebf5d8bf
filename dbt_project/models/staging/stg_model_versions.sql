-- Every registered (model_id, version), typed, with its registration order per model.
with versions as (
    select {{ typed_columns('farm', 'model_versions') }}
    from {{ source('farm', 'model_versions') }}
)

select
    versions.*,
    row_number() over (
        partition by model_id
        order by recorded_at, version
    ) as registration_order
from versions
