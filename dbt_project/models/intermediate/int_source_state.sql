-- The state of the inputs at the start of this build, in one row: the database's clock, and
-- fingerprints of the inputs that change every date at once (the model registry, the field
-- map, the grader version each disease's estimate uses). analytics_watermark keeps this row once every incremental model is built; the next
-- build's int_changed_days takes the dates of the rows stamped since (less a margin).
{{ config(materialized='table') }}
select
    current_timestamp as build_started_at,
    (
        select string_agg(
            model_id || '/' || version || '/' || cast(active as text) || '/'
            || cast(recorded_at as text),
            ',' order by model_id, version
        )
        from {{ ref('stg_model_versions') }}
    ) as models_fingerprint,
    (
        select string_agg(
            position_id || '/' || area || '/' || cast(dose_ml_per_sqft as text),
            ',' order by position_id
        )
        from {{ ref('stg_positions') }}
    ) as positions_fingerprint,
    (
        select string_agg(
            disease_type || '/' || disease_model_id || '/' || disease_model_version,
            ',' order by disease_type
        )
        from {{ ref('int_estimate_versions') }}
    ) as estimate_versions_fingerprint
