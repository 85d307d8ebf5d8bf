-- The trial's design, one row, from the field map (trial_design.design_name in Python
-- names the same four designs): how the arms were assigned and whether positions are
-- compared within blocks. The report says it; under two allocated areas the effect is the
-- medicine plus any difference in progression between the areas.
with summary as (
    select
        count(*) as positions,
        sum(case when area = 'treated' then 1 else 0 end) as treated_positions,
        sum(case when area = 'control' then 1 else 0 end) as control_positions,
        count(block) as blocked_positions,
        count(distinct block) as blocks,
        max(assignment) as assignment,
        max(randomisation_seed) as randomisation_seed
    from {{ ref('stg_positions') }}
)

select
    case
        when assignment = 'randomised' and positions > 0 and blocked_positions = positions
            then 'randomised in blocks'
        when assignment = 'randomised' then 'randomised'
        when positions > 0 and blocked_positions = positions then 'allocated in blocks'
        else 'allocated (two areas)'
    end as design,
    assignment,
    randomisation_seed,
    blocks,
    positions,
    treated_positions,
    control_positions
from summary
