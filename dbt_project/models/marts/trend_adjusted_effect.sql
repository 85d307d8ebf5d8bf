-- The trial with a pre-period (FARM_TREATMENT_START / var treatment_start; empty without
-- one): per disease and date, the placebo looks before treatment (period 'pre': the same
-- estimator as treatment_effect on the change since each position's first day, which is
-- zero in expectation when the arms' trends were parallel) and, from the day treatment
-- begins, the effect net of each position's pre-treatment trend (period 'treatment').
-- A position's trend is the least-squares line through its pre-period mean grades (two
-- pre-period dates at least; a position with fewer is left out of the adjusted estimate);
-- its adjusted change on a treatment date is its mean grade minus that line's value there.
-- The treated minus control mean adjusted change is then estimated as treatment_effect
-- does (within blocks when the map has them, else Welch), so the interval carries the
-- noise of each position's fitted trend. A table, rebuilt whole: a re-graded pre-period
-- day moves every treatment date's estimate.
{%- set start = treatment_start() %}
{%- set start_date = "cast('" ~ start ~ "' as date)" if start else "cast(null as date)" %}
with pre_trends as (
    select
        position_id,
        disease_type,
        count(*) as pre_dates,
        regr_slope(mean_grade, cast(days_since_first_date as double precision)) as slope,
        regr_intercept(mean_grade, cast(days_since_first_date as double precision))
            as intercept
    from {{ ref('position_trajectories') }}
    where date < {{ start_date }}
    group by position_id, disease_type
),

adjusted as (
    select
        trajectories.position_id,
        trajectories.disease_type,
        trajectories.area,
        trajectories.block,
        trajectories.date,
        trajectories.first_date,
        trajectories.mean_grade
            - (pre_trends.intercept + pre_trends.slope * trajectories.days_since_first_date)
            as change_from_first_day
    from {{ ref('position_trajectories') }} as trajectories
    inner join pre_trends
        on pre_trends.position_id = trajectories.position_id
        and pre_trends.disease_type = trajectories.disease_type
    where trajectories.date >= {{ start_date }} and pre_trends.pre_dates >= 2
),

pre_period as (
    select position_id, disease_type, area, block, date, first_date, change_from_first_day
    from {{ ref('position_trajectories') }}
    where date < {{ start_date }}
),

placebo as (
    {{ treatment_effect_estimate('pre_period', ['disease_type'], stored_baselines=true) | indent(4) }}
),

treated_period as (
    {{ treatment_effect_estimate('adjusted', ['disease_type'], stored_baselines=true) | indent(4) }}
)

select
    'pre' as period,
    {{ start_date }} as treatment_start,
    cast(date - {{ start_date }} as integer) as days_from_treatment_start,
    placebo.*
from placebo

union all

-- Looks count from the day treatment begins (look 1), the decision rule's look numbers:
-- the pre-period's placebo looks decide nothing about the medicine and spend no alpha.
select
    'treatment' as period,
    {{ start_date }} as treatment_start,
    cast(date - {{ start_date }} as integer) as days_from_treatment_start,
    treated_period.disease_type,
    treated_period.date,
    {{ start_date }} as first_date,
    cast(date - {{ start_date }} as integer) + 1 as days_since_start,
    {%- for column in ['n_treated', 'n_control', 'n_late_baseline', 'mean_change_treated',
        'mean_change_control', 'effect', 'std_error', 'df', 't_quantile', 'ci_low', 'ci_high',
        'significant', 'estimator', 'n_blocks', 'n_outside_blocks', 'design'] %}
    treated_period.{{ column }}{{ ',' if not loop.last }}
    {%- endfor %}
from treated_period
