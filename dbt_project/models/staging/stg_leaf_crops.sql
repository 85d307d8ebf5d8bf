-- depends_on: {{ ref('int_changed_days') }}  (its data tests check the dates this build rebuilds)
-- Leaf crops of every detector version, typed, flagged `is_active` for the active detector.
with crops as (
    select
        cast(position_id as text) as position_id,
        cast(date as date) as date,
        cast(leaf_crop_idx as integer) as leaf_crop_idx,
        cast(x0 as double precision) as x0,
        cast(y0 as double precision) as y0,
        cast(x1 as double precision) as x1,
        cast(y1 as double precision) as y1,
        cast(score as double precision) as score,
        cast(crop_uri as text) as crop_uri,
        cast(cropper_model_id as text) as cropper_model_id,
        cast(cropper_model_version as text) as cropper_model_version
    from {{ source('farm', 'leaf_crops') }}
)

select
    crops.*,
    coalesce(versions.active, false) as is_active
from crops
{{ left_join_registry('versions', 'crops.cropper_model_id', 'crops.cropper_model_version') }}
