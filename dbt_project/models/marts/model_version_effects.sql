-- The treatment effect as each grader version sees it: the estimator of treatment_effect
-- over every version's own grades, so that two versions can be compared on the official
-- question before one of them is made active.
--
-- Cheap with one version: a disease graded by one version only, the active one, has
-- exactly treatment_effect's input, so its rows are treatment_effect's (already built,
-- incrementally fed) and the estimator runs here only for the diseases that more than one
-- version graded.
-- depends_on: {{ ref('treatment_effect') }}
with versions as (
    select
        disease_type,
        disease_model_id,
        disease_model_version,
        max(case when grader_is_active then 1 else 0 end) as graded_active
    from {{ ref('int_position_day_by_version') }}
    group by disease_type, disease_model_id, disease_model_version
),

single_version as (
    select
        disease_type,
        min(disease_model_id) as disease_model_id,
        min(disease_model_version) as disease_model_version
    from versions
    group by disease_type
    having count(*) = 1 and min(graded_active) = 1
),

compared_position_day as (
    select *
    from {{ ref('int_position_day_by_version') }}
    where disease_type not in (select disease_type from single_version)
),

effects as (
    {{ treatment_effect_estimate(
        'compared_position_day',
        ['disease_type', 'disease_model_id', 'disease_model_version'],
    ) }}
)

select
    effects.*,
    coalesce(registry.active, false) as version_active
from effects
{{ left_join_registry('registry', 'effects.disease_model_id', 'effects.disease_model_version') }}

union all

select
    treatment_effect.disease_type,
    single_version.disease_model_id,
    single_version.disease_model_version,
    {%- if execute %}
    {%- for column in adapter.get_columns_in_relation(ref('treatment_effect')) %}
    {%- if column.name | lower != 'disease_type' %}
    treatment_effect.{{ column.name }},
    {%- endif %}
    {%- endfor %}
    {%- endif %}
    true as version_active
from {{ ref('treatment_effect') }} as treatment_effect
inner join single_version
    on single_version.disease_type = treatment_effect.disease_type
