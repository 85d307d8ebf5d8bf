{#
  Incremental builds by day (issue 16). `int_changed_days` lists the dates whose source rows
  changed since the last complete build (see that model); every incremental model deletes
  and re-inserts exactly those dates. The dates are rendered into the SQL as literals, not
  joined as a subquery: both planners then see a short IN list on an indexed (PostgreSQL)
  or zone-mapped (DuckDB) date column and read only those days, whatever the history.

  On a first build or `dbt build --full-refresh` the models are not incremental and none
  of this applies: they are built from every row, as before.
#}

{# The dates to rebuild, as 'YYYY-MM-DD' strings ([] at parse time). #}
{% macro days_to_rebuild() %}
    {#- Looked up by name, not ref(): a data test's `where` is rendered only when it runs,
        too late for dbt to record a ref. Every model that reads it says
        `-- depends_on: {{ ref('int_changed_days') }}`, and so do the staging views whose
        tests filter on it, so dbt builds int_changed_days before any of them. -#}
    {%- if not execute -%}
        {{ return([]) }}
    {%- endif -%}
    {%- set changed_days = adapter.get_relation(
        database=target.database, schema=target.schema, identifier='int_changed_days'
    ) -%}
    {%- if changed_days is none -%}
        {{ exceptions.raise_compiler_error(
            "int_changed_days is not built: build it first (dbt build builds it before the "
            ~ "models and tests that read it)"
        ) }}
    {%- endif -%}
    {%- set rows = run_query(
        "select cast(date as text) as day from " ~ changed_days ~ " order by 1"
    ) -%}
    {{ return(rows.columns[0].values() | list) }}
{% endmacro %}

{# The earliest date to rebuild as a date literal (a date after every date when none). #}
{% macro earliest_day_to_rebuild() %}
    {%- set days = days_to_rebuild() -%}
    {%- if days | length == 0 -%}
        cast('9999-12-31' as date)
    {%- else -%}
        cast('{{ days[0] }}' as date)
    {%- endif -%}
{% endmacro %}

{#
  The dates treatment_effect rebuilds, after position_trajectories was built: the changed
  days and the dates of the (position, disease) curves position_trajectories reset (first
  date on or after the earliest changed day: their changes moved on every date). Any other
  date has the same trajectory rows as before. A disease's first date (the trial's start,
  in first_date and days_since_start) moves only when the earliest changed day is on or
  before it: then every curve of that disease was reset and all of its dates are here.
#}
{% macro effect_days_to_rebuild() %}
    {%- if not execute or not is_incremental() -%}
        {{ return([]) }}
    {%- endif -%}
    {%- set changed = days_to_rebuild() -%}
    {%- if changed | length == 0 -%}
        {{ return([]) }}
    {%- endif -%}
    {%- set reset = run_query(
        "select distinct cast(date as text) from " ~ ref('position_trajectories')
        ~ " where first_date >= " ~ earliest_day_to_rebuild()
    ).columns[0].values() | list -%}
    {{ return((changed + reset) | unique | sort | list) }}
{% endmacro %}

{# "<column> in (date literals)", or a predicate that is false when nothing changed;
   `days`: the dates (days_to_rebuild() by default). #}
{% macro in_days_to_rebuild(column, days=none) %}
    {%- if days is none -%}
        {%- set days = days_to_rebuild() -%}
    {%- endif -%}
    {%- if days | length == 0 -%}
        1 = 0
    {%- else -%}
        {{ column }} in ({% for day in days %}cast('{{ day }}' as date){% if not loop.last %}, {% endif %}{% endfor %})
    {%- endif -%}
{% endmacro %}

{#
  Pre-hook of an incremental model: delete the rows of the dates to rebuild (`days`, by
  default days_to_rebuild(); and, with `reset_column`, every row whose baseline date in that
  column is one of them or later), so that a date whose new slice is empty (every photo of
  it held back, or re-graded to no leaves) leaves no stale rows behind; the model then
  appends the new slice. dbt's delete+insert only deletes the keys present in the new
  slice, hence this hook.
#}
{% macro delete_days_to_rebuild(reset_column=none, days=none) %}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ in_days_to_rebuild('date', days) }}
        {%- if reset_column %} or {{ reset_column }} >= {{ earliest_day_to_rebuild() }}{% endif %}
    {%- else -%}
        select 1
    {%- endif -%}
{% endmacro %}

{# The slice an incremental model reads: its changed days, or everything on a full build. #}
{% macro changed_days_filter(column, days=none) %}
    {%- if is_incremental() -%}
        {{ in_days_to_rebuild(column, days) }}
    {%- else -%}
        1 = 1
    {%- endif -%}
{% endmacro %}

{#
  The dates of `table` with a row stamped (`stamp`) after `epoch` (seconds: when the
  previous complete build started) less the late-commit margin.
#}
{% macro dates_written_since(table, stamp, epoch) %}
    select cast(date as date) as date
    from {{ source('farm', table) }}
    where {{ stamp }} > to_timestamp({{ epoch }})
        - interval '{{ var("late_commit_margin_minutes") }} minutes'
{% endmacro %}

{#
  dbt's own macro, extended: a data test configured with `where: "__changed_days__"` checks
  only the rows of the dates this build rebuilds (every date on a first or full build).
  The rows of the other dates were checked by the build that wrote them; a failed test
  skips the models after it and so keeps the watermark, and the next build checks the
  same dates again.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- if '__changed_days__' in where -%}
            {%- set where = where | replace('__changed_days__', in_days_to_rebuild('date')) -%}
        {%- endif -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}

{#
  The configuration of a model incremental by day: `{{ incremental_by_day() }}` at its top.
  Appends the new slice after the pre-hook deleted the rows it replaces (append and hooks
  work the same on dbt-duckdb and dbt-postgres). The ref() records the dependency on
  int_changed_days at parse time. `days_macro`: the name of a macro that lists the dates
  to rebuild instead of days_to_rebuild() (the model filters its slice on the same list).
#}
{% macro incremental_by_day(reset_column=none, days_macro=none) %}
    {%- do ref('int_changed_days') -%}
    {%- if reset_column -%}
        {%- set hook = "{{ delete_days_to_rebuild(reset_column='" ~ reset_column ~ "') }}" -%}
    {%- elif days_macro -%}
        {%- set hook = "{{ delete_days_to_rebuild(days=" ~ days_macro ~ "()) }}" -%}
    {%- else -%}
        {%- set hook = "{{ delete_days_to_rebuild() }}" -%}
    {%- endif -%}
    {#- PostgreSQL plans the next build's joins on these tables from their statistics; dbt
        never analyzes, and a fresh table's unknown statistics gave nested loops (minutes). -#}
    {{ config(
        materialized='incremental',
        incremental_strategy='append',
        pre_hook=hook,
        post_hook="{{ 'analyze ' ~ this if target.type == 'postgres' else 'select 1' }}",
    ) }}
{% endmacro %}
