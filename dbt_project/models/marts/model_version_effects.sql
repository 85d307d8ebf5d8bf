-- The treatment effect as each grader version sees it: the estimator of treatment_effect
-- over every version's own grades, so that two versions can be compared on the official
-- question before one of them is made active.
with effects as (
    {{ treatment_effect_estimate(
        ref('int_position_day_by_version'),
        ['disease_type', 'disease_model_id', 'disease_model_version'],
    ) }}
)

select
    effects.*,
    coalesce(versions.active, false) as version_active
from effects
left join {{ ref('stg_model_versions') }} as versions
    on versions.model_id = effects.disease_model_id
    and versions.version = effects.disease_model_version
