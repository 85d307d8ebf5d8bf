-- The sources as int_source_state saw them at the start of the last build whose
-- incremental models all succeeded. Built last (it depends on every incremental model, and
-- dbt build skips it when one of them or their tests fail): a failed build is taken again
-- from the previous watermark by the next one.
-- depends_on: {{ ref('daily_severity') }}
-- depends_on: {{ ref('coverage') }}
-- depends_on: {{ ref('int_position_day_by_version') }}
-- depends_on: {{ ref('position_trajectories') }}
-- depends_on: {{ ref('treatment_effect') }}
-- depends_on: {{ ref('int_version_pairs_by_day') }}
{{ config(materialized='table') }}
select * from {{ ref('int_source_state') }}
