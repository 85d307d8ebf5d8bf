-- The sources as int_source_state saw them at the start of the last build whose
-- incremental models all succeeded. Built last (it depends on every incremental model, and
-- dbt build skips it when one of them or their tests fail): a failed build is taken again
-- from the previous watermark by the next one.
--
-- A build that selects only some of them (`--select`, `--exclude`, a subset materialized
-- in the Dagster UI) is not complete either: the watermark stays where it was, or the
-- models left out would never rebuild the days that changed since.
{%- set incremental_models = [
    'daily_severity',
    'coverage',
    'int_position_day_by_version',
    'position_trajectories',
    'treatment_effect',
    'int_version_pairs_by_day',
] %}
{%- for name in incremental_models %}
-- depends_on: {{ ref(name) }}
{%- endfor %}
-- depends_on: {{ ref('int_source_state') }}
{{ config(materialized='table') }}
{%- set left_out = [] -%}
{%- if execute -%}
    {%- for name in incremental_models -%}
        {%- if ('model.' ~ project_name ~ '.' ~ name) not in selected_resources -%}
            {%- do left_out.append(name) -%}
        {%- endif -%}
    {%- endfor -%}
{%- endif %}

{% if left_out %}
-- This build left out {{ left_out | join(', ') }}: the previous watermark stays.
    {%- if adapter.get_relation(this.database, this.schema, this.identifier) is not none %}
select * from {{ this }}
    {%- else %}
-- No previous one: an empty watermark, and the next build rebuilds every date.
select * from {{ ref('int_source_state') }} where false
    {%- endif %}
{% else %}
select * from {{ ref('int_source_state') }}
{% endif %}
