-- What the sources look like at the start of this build, in one row: the newest write
-- time of each timestamped source table, and fingerprints of the inputs that change every
-- date at once (the model registry, the field map). analytics_watermark keeps this row once
-- every incremental model is built; the next build's int_changed_days compares with it.
-- (max() of an indexed timestamp: an index probe on PostgreSQL, one column scan on DuckDB.)
{{ config(materialized='table') }}
select
    (select max(graded_at) from {{ source('farm', 'disease_grades') }}) as grades_written_at,
    (select max(ingested_at) from {{ source('farm', 'drone_images') }}) as images_written_at,
    (select max(checked_at) from {{ source('farm', 'partition_quality') }}) as quality_written_at,
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
    ) as positions_fingerprint
