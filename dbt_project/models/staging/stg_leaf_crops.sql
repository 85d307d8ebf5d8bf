-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Leaf crops of every detector version, typed, flagged `is_active` for the active detector.
with crops as (
    select {{ typed_columns('farm', 'leaf_crops') }}
    from {{ source('farm', 'leaf_crops') }}
)

select
    crops.*,
    coalesce(versions.active, false) as is_active
from crops
{{ left_join_registry('versions', 'crops.cropper_model_id', 'crops.cropper_model_version') }}
