-- Difference in differences per disease and date, positions as the unit
-- (see the model description in _marts.yml for the estimator and why).
with position_day as (
    select position_id, area, date, disease_type, mean_grade
    from {{ ref('position_trajectories') }}
),

trial_start as (
    select disease_type, min(date) as first_date
    from position_day
    group by disease_type
),

baseline as (
    select
        position_day.disease_type,
        position_day.position_id,
        position_day.mean_grade as baseline_grade
    from position_day
    inner join trial_start
        on trial_start.disease_type = position_day.disease_type
        and trial_start.first_date = position_day.date
),

-- A position counts on a date when it was graded both then and on the trial's first date.
changes as (
    select
        position_day.disease_type,
        position_day.date,
        trial_start.first_date,
        position_day.area,
        position_day.mean_grade - baseline.baseline_grade as change
    from position_day
    inner join trial_start
        on trial_start.disease_type = position_day.disease_type
    inner join baseline
        on baseline.disease_type = position_day.disease_type
        and baseline.position_id = position_day.position_id
    where position_day.date > trial_start.first_date
),

by_area as (
    select
        disease_type,
        date,
        first_date,
        sum(case when area = 'treated' then 1 else 0 end) as n_treated,
        sum(case when area = 'control' then 1 else 0 end) as n_control,
        avg(case when area = 'treated' then change end) as mean_change_treated,
        avg(case when area = 'control' then change end) as mean_change_control,
        var_samp(case when area = 'treated' then change end) as var_treated,
        var_samp(case when area = 'control' then change end) as var_control
    from changes
    group by disease_type, date, first_date
),

-- Squared standard errors of the two group means.
welch as (
    select
        by_area.*,
        mean_change_treated - mean_change_control as effect,
        var_treated / n_treated as se2_treated,
        var_control / n_control as se2_control
    from by_area
),

estimates as (
    select
        welch.*,
        sqrt(se2_treated + se2_control) as std_error,
        -- Welch–Satterthwaite; undefined when both groups are constant (se = 0).
        case
            when se2_treated + se2_control > 0
                then (se2_treated + se2_control) * (se2_treated + se2_control)
                    / (
                        se2_treated * se2_treated / (n_treated - 1)
                        + se2_control * se2_control / (n_control - 1)
                    )
        end as df
    from welch
),

-- The largest tabulated df not above floor(df): exact for df < 201, conservative above.
t_lookup as (
    select
        estimates.disease_type,
        estimates.date,
        max(t_quantiles.df) as t_df
    from estimates
    inner join {{ ref('t_quantiles') }} as t_quantiles
        on t_quantiles.df <= floor(estimates.df)
    group by estimates.disease_type, estimates.date
),

intervals as (
    select
        estimates.*,
        t_quantiles.t_975 as t_quantile,
        estimates.effect - t_quantiles.t_975 * estimates.std_error as ci_low,
        estimates.effect + t_quantiles.t_975 * estimates.std_error as ci_high
    from estimates
    left join t_lookup
        on t_lookup.disease_type = estimates.disease_type
        and t_lookup.date = estimates.date
    left join {{ ref('t_quantiles') }} as t_quantiles
        on t_quantiles.df = t_lookup.t_df
)

select
    disease_type,
    date,
    cast(date - first_date as integer) as days_since_start,
    n_treated,
    n_control,
    mean_change_treated,
    mean_change_control,
    effect,
    std_error,
    df,
    t_quantile,
    ci_low,
    ci_high,
    case when ci_low > 0 or ci_high < 0 then true else false end as significant
from intervals
