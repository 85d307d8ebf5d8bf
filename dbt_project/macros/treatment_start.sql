{#
  The day treatment begins, as a 'YYYY-MM-DD' string, or none (no pre-period): the dbt var
  treatment_start, else $FARM_TREATMENT_START (farm_platform.config; the Dagster code
  location passes it on to dbt in its environment). A bad date stops the build with the
  setting's name, not a database cast error somewhere in the SQL.
#}
{% macro treatment_start() %}
    {%- set raw = var('treatment_start', env_var('FARM_TREATMENT_START', '')) -%}
    {%- if not raw -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set day = raw | string | trim -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', day) -%}
        {{ exceptions.raise_compiler_error(
            "treatment_start / FARM_TREATMENT_START=" ~ day ~ " is not a date: give the day "
            ~ "treatment begins as YYYY-MM-DD, or unset it for a trial without a pre-period"
        ) }}
    {%- endif -%}
    {{ return(day) }}
{% endmacro %}
