{#
    Fails for every model with more than one active version in the registry table.
#}
{% test one_active_version(model, model_column='model_id') %}
select {{ model_column }}, count(*) as active_versions
from {{ model }}
where active
group by {{ model_column }}
having count(*) > 1
{% endtest %}
