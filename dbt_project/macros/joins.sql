{#
  `left.c = right.c and ...` over `columns`: a join on a composite key. A graded leaf is
  named by seven columns and a grader version by three; a key listed once per join cannot
  lose one of its columns in one of the joins.
#}
{% macro keys_match(left, right, columns) -%}
    {%- for column in columns -%}
        {{ left }}.{{ column }} = {{ right }}.{{ column }}{% if not loop.last %} and {% endif %}
    {%- endfor -%}
{%- endmacro %}

{#
  The registry's row (stg_model_versions, as `alias`) of each model version the rows name
  in `model_id` and `version`, if it is registered: a version the registry does not know
  joins no row, so read it as inactive with `coalesce({{ alias }}.active, false)`.
#}
{% macro left_join_registry(alias, model_id, version) -%}
left join {{ ref('stg_model_versions') }} as {{ alias }}
        on {{ alias }}.model_id = {{ model_id }}
        and {{ alias }}.version = {{ version }}
{%- endmacro %}
