-- The dates the incremental models rebuild in this build: every date with a grade, photo or
-- quality check stamped after the previous complete build started (analytics_watermark),
-- less a margin. The writer stamps rows with the time its run started grading the day
-- (graded_at, ingested_at; checked_at) and commits them chunk by chunk later, so a row can
-- commit after a build with a stamp from before it: rows stamped up to
-- `late_commit_margin_minutes` before that build are taken again (keep the margin above
-- the longest image run, Dagster's dagster/max_runtime). Replacing a photo's rows writes
-- new stamps, so a re-graded photo, a backfilled day and a late photo all name their date
-- here; leaf_crops has no stamp and is always written together with its photo's grades.
--
-- Every date is rebuilt on a first build, on `--full-refresh`, and when the model
-- registry (an active version, a new version's registration order), the field map or the
-- grader version an estimate uses (int_estimate_versions) changed: those change rows of
-- every date.
-- depends_on: {{ ref('int_source_state') }}
{{ config(materialized='table') }}
{%- set previous = none -%}
{%- set rebuild_all = true -%}
{%- if execute and not flags.FULL_REFRESH -%}
    {%- set watermark = adapter.get_relation(
        database=this.database, schema=this.schema, identifier='analytics_watermark'
    ) -%}
    {#- A watermark written before a fingerprint existed cannot vouch for it: rebuild all. -#}
    {%- if watermark is not none and 'estimate_versions_fingerprint' in (
        adapter.get_columns_in_relation(watermark) | map(attribute='name') | map('lower') | list
    ) -%}
        {%- set rows = run_query(
            "select extract(epoch from previous.build_started_at), "
            ~ "case when previous.models_fingerprint = latest.models_fingerprint "
            ~ "and previous.positions_fingerprint = latest.positions_fingerprint "
            ~ "and coalesce(previous.estimate_versions_fingerprint, '') "
            ~ "= coalesce(latest.estimate_versions_fingerprint, '') "
            ~ "then 1 else 0 end "
            ~ "from " ~ watermark ~ " as previous cross join "
            ~ ref('int_source_state') ~ " as latest"
        ) -%}
        {%- if rows.rows | length == 1 and rows.rows[0][1] == 1 -%}
            {%- set previous = rows.rows[0][0] -%}
            {%- set rebuild_all = false -%}
        {%- endif -%}
    {%- endif -%}
{%- endif -%}


{% if rebuild_all %}
select cast(date as date) as date from {{ source('farm', 'drone_images') }}
union
select cast(date as date) as date from {{ source('farm', 'leaf_crops') }}
union
select cast(date as date) as date from {{ source('farm', 'disease_grades') }}
{% else %}
{{ dates_written_since('disease_grades', 'graded_at', previous) }}
union
{{ dates_written_since('drone_images', 'ingested_at', previous) }}
union
{{ dates_written_since('partition_quality', 'checked_at', previous) }}
{% endif %}
