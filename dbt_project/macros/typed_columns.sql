{#
  `cast(column as data_type) as column` for every column of the source
  `source_name`.`table_name`, in the order and with the `data_type` that sources.yml
  declares for it: the types of a warehouse table are written once, where the table is
  documented, and its staging model cannot drift from them. dbt knows the graph only when
  it executes a model; at parse time this renders nothing.
#}
{% macro typed_columns(source_name, table_name) -%}
    {%- if execute -%}
        {%- set table = graph.sources.values()
            | selectattr('source_name', 'equalto', source_name)
            | selectattr('name', 'equalto', table_name)
            | first -%}
        {%- for column in table.columns.values() -%}
            {%- if not column.data_type -%}
                {{ exceptions.raise_compiler_error(
                    "sources.yml: column " ~ column.name ~ " of source " ~ source_name ~ "."
                    ~ table_name ~ " has no data_type; give it the warehouse's type"
                ) }}
            {%- endif -%}
            cast({{ column.name }} as {{ column.data_type }}) as {{ column.name }}
            {%- if not loop.last %},
    {% endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
