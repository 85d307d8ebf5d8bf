{#
  Difference in differences with positions as the unit, and its Student-t 95 % interval
  (the estimator is described on the treatment_effect model in _marts.yml). Without blocks:
  treated minus control mean change, Welch standard error and df. When every position of
  a date has a block (a blocked design): treated minus control mean change WITHIN each
  block that has both arms that date, then the mean over those blocks, its standard error
  from their spread and n_blocks − 1 df (a paired t for blocks of two); positions in a
  block without the other arm that date are counted in n_outside_blocks.

  position_day: a relation with one row per position, date and group: position_id, area
  ('control' or 'treated'), block (null without blocks), date, mean_grade, and the columns
  of `group_by`. Each
  position's change is taken from ITS OWN first graded date in the group (own_first_day,
  the definition position_trajectories uses too), so a position missing on the group's
  first date (a partial first flight, a missed photo, a late joiner) still counts on every
  later date it was graded. first_date / days_since_start are the group's first date.

  stored_baselines: position_day is position_trajectories, whose rows carry the baseline
  already (first_date, change_from_first_day: own_first_day's columns); then only its rows
  that `rows_filter` keeps are estimated (an incremental build's dates), and the group's
  first date is still taken over all of its rows.
#}
{% macro treatment_effect_estimate(position_day, group_by, stored_baselines=false, rows_filter='1 = 1') %}
{%- set keys = group_by | join(', ') -%}
with
{%- if stored_baselines %}
own_baseline as (
    select
        {{ keys }},
        position_id,
        area,
        block,
        date,
        first_date as position_first_date,
        change_from_first_day
    from {{ position_day }}
    where {{ rows_filter }}
),

-- Each group's first date over all of its rows, not only the kept ones. A scan and a
-- group by: a correlated min() per group was evaluated per row on PostgreSQL (minutes).
trial_start as (
    select {{ keys }}, min(first_date) as first_date
    from {{ position_day }}
    group by {{ keys }}
),
{%- else %}
position_day as (
    select {{ keys }}, position_id, area, block, date, mean_grade
    from {{ position_day }}
),

trial_start as (
    select {{ keys }}, min(date) as first_date
    from position_day
    group by {{ keys }}
),

own_baseline as (
    select
        position_day.*,
        {{ own_first_day(group_by + ['position_id']) }}
    from position_day
),
{%- endif %}

-- A position counts on every date after its own first graded date.
changes as (
    select
        {% for column in group_by %}own_baseline.{{ column }}, {% endfor %}
        own_baseline.date,
        trial_start.first_date,
        own_baseline.area,
        own_baseline.block,
        own_baseline.change_from_first_day as change,
        case when own_baseline.position_first_date > trial_start.first_date then 1 else 0 end
            as joined_late
    from own_baseline
    inner join trial_start
        on 1 = 1 {{ same_group_columns('trial_start', 'own_baseline', group_by) }}
    where own_baseline.date > own_baseline.position_first_date
),

by_area as (
    select
        {{ keys }},
        date,
        first_date,
        sum(case when area = 'treated' then 1 else 0 end) as n_treated,
        sum(case when area = 'control' then 1 else 0 end) as n_control,
        sum(joined_late) as n_late_baseline,
        case when count(block) = count(*) then 1 else 0 end as blocked,
        avg(case when area = 'treated' then change end) as mean_change_treated,
        avg(case when area = 'control' then change end) as mean_change_control,
        var_samp(case when area = 'treated' then change end) as var_treated,
        var_samp(case when area = 'control' then change end) as var_control
    from changes
    group by {{ keys }}, date, first_date
),

-- Treated minus control mean change within each block (null: the block lacks an arm).
by_block as (
    select
        {{ keys }},
        date,
        block,
        count(*) as positions,
        avg(case when area = 'treated' then change end)
            - avg(case when area = 'control' then change end) as difference
    from changes
    where block is not null
    group by {{ keys }}, date, block
),

blocked as (
    select
        {{ keys }},
        date,
        count(difference) as n_blocks,
        sum(case when difference is null then positions else 0 end) as n_outside_blocks,
        avg(difference) as block_effect,
        var_samp(difference) as block_var
    from by_block
    group by {{ keys }}, date
),

-- Squared standard errors of the two group means.
welch as (
    select
        by_area.*,
        case when by_area.blocked = 1 then 'within blocks' else 'welch' end as estimator,
        case when by_area.blocked = 1 then blocked.n_blocks end as n_blocks,
        case when by_area.blocked = 1 then blocked.n_outside_blocks end as n_outside_blocks,
        blocked.block_effect,
        blocked.block_var,
        var_treated / n_treated as se2_treated,
        var_control / n_control as se2_control
    from by_area
    left join blocked
        on blocked.date = by_area.date {{ same_group_columns('blocked', 'by_area', group_by) }}
),

estimates as (
    select
        welch.*,
        case
            when blocked = 1 then block_effect
            else mean_change_treated - mean_change_control
        end as effect,
        case
            when blocked = 1 then sqrt(block_var / n_blocks)
            else sqrt(se2_treated + se2_control)
        end as std_error,
        case
            -- Blocks: n_blocks − 1, undefined when every block differs by the same amount.
            when blocked = 1 then
                case when block_var > 0 then cast(n_blocks - 1 as double precision) end
            -- Welch–Satterthwaite; undefined when both groups are constant (se = 0).
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
        {% for column in group_by %}estimates.{{ column }}, {% endfor %}
        estimates.date,
        max(t_quantiles.df) as t_df
    from estimates
    inner join {{ ref('t_quantiles') }} as t_quantiles
        on t_quantiles.df <= floor(estimates.df)
    group by {% for column in group_by %}estimates.{{ column }}, {% endfor %}estimates.date
),

intervals as (
    select
        estimates.*,
        t_quantiles.t_975 as t_quantile,
        estimates.effect - t_quantiles.t_975 * estimates.std_error as ci_low,
        estimates.effect + t_quantiles.t_975 * estimates.std_error as ci_high
    from estimates
    left join t_lookup
        on t_lookup.date = estimates.date
        {{ same_group_columns('t_lookup', 'estimates', group_by) }}
    left join {{ ref('t_quantiles') }} as t_quantiles
        on t_quantiles.df = t_lookup.t_df
)

select
    {{ keys }},
    date,
    first_date,
    cast(date - first_date as integer) as days_since_start,
    n_treated,
    n_control,
    n_late_baseline,
    mean_change_treated,
    mean_change_control,
    effect,
    std_error,
    df,
    t_quantile,
    ci_low,
    ci_high,
    case when ci_low > 0 or ci_high < 0 then true else false end as significant,
    estimator,
    n_blocks,
    n_outside_blocks,
    trial_design.design
from intervals
cross join {{ ref('trial_design') }} as trial_design
{% endmacro %}

{# " and left.c = right.c" for every column c: a join on the group's columns. #}
{% macro same_group_columns(left, right, columns) -%}
    {%- for column in columns %} and {{ left }}.{{ column }} = {{ right }}.{{ column }}{% endfor -%}
{%- endmacro %}

{#
  The one definition of a position's baseline: its first graded date within `partition_by`
  (position_id and the group's columns) and its change in mean grade since that date.
  Columns position_first_date and change_from_first_day, for a select over a relation with
  date and mean_grade.
#}
{% macro own_first_day(partition_by) -%}
    min(date) over (partition by {{ partition_by | join(', ') }}) as position_first_date,
    mean_grade - first_value(mean_grade) over (
        partition by {{ partition_by | join(', ') }}
        order by date
        rows between unbounded preceding and unbounded following
    ) as change_from_first_day
{%- endmacro %}
