-- Mean grade of each position per date and disease (the grades of the version the estimate
-- uses, int_estimate_versions), and its change since the position's own first graded date.
--
-- Incremental. A row depends on its own date and on the position's first graded date, so
-- a build replaces the rows of the changed days and, for every (position, disease) whose
-- first date is on or after the earliest changed day, all of its rows: a late first photo
-- (a new, earlier first date) or a re-graded or removed first day moves that position's
-- whole curve. A pair's first date is before the earliest changed day both before and
-- after the change or on/after it both times, so the old rows' first_date tells which
-- pairs to delete and the new one which to insert.
{{ incremental_by_day(reset_column='first_date') }}
-- PostgreSQL: the rows of the dates treatment_effect rebuilds and the curves reset since a
-- date (effect_days_to_rebuild), without scanning the table.
{{ config(indexes=[{'columns': ['date']}, {'columns': ['first_date']}]) }}
with position_day as (
    -- The rows of the grader version the estimate uses (int_estimate_versions: the active
    -- one, or the old one until the active one has backfilled the trial's history).
    select
        by_version.position_id,
        by_version.area,
        by_version.block,
        by_version.dose_ml_per_sqft,
        by_version.date,
        by_version.disease_type,
        by_version.leaves,
        by_version.mean_grade
    from {{ ref('int_position_day_by_version') }} as by_version
    inner join {{ ref('int_estimate_versions') }} as estimate
        on {{ keys_match(
            'estimate', 'by_version', ['disease_type', 'disease_model_id', 'disease_model_version']
        ) }}
    {%- if is_incremental() %}
    -- Rows before the earliest changed day belong to pairs whose first day is kept.
    where by_version.date >= {{ earliest_day_to_rebuild() }}
    {%- endif %}
),

{%- if is_incremental() %}

-- The pairs whose first day is before the earliest changed day: the pre-hook kept that
-- day's row and it has not changed, so their new rows take its mean grade as baseline.
kept_baselines as (
    select position_id, disease_type, first_date, mean_grade as first_mean_grade
    from {{ this }}
    where date = first_date
),
{%- endif %}

{%- if is_incremental() %}

-- The other pairs: every row of theirs is on or after the earliest changed day.
reset_position_day as (
    select position_day.*
    from position_day
    left join kept_baselines
        on kept_baselines.position_id = position_day.position_id
        and kept_baselines.disease_type = position_day.disease_type
    where kept_baselines.position_id is null
),
{%- endif %}

with_first as (
    -- own_first_day: the baseline rule treatment_effect uses too; incrementally over the
    -- reset pairs only, each of them whole.
    select
        *,
        {{ own_first_day(['position_id', 'disease_type']) }}
    from {% if is_incremental() %}reset_position_day{% else %}position_day{% endif %}
)

select
    position_id,
    date,
    disease_type,
    area,
    block,
    dose_ml_per_sqft,
    leaves,
    mean_grade,
    position_first_date as first_date,
    cast(date - position_first_date as integer) as days_since_first_date,
    change_from_first_day
from with_first
{%- if is_incremental() %}

union all

select
    position_day.position_id,
    position_day.date,
    position_day.disease_type,
    position_day.area,
    position_day.block,
    position_day.dose_ml_per_sqft,
    position_day.leaves,
    position_day.mean_grade,
    kept_baselines.first_date,
    cast(position_day.date - kept_baselines.first_date as integer) as days_since_first_date,
    position_day.mean_grade - kept_baselines.first_mean_grade as change_from_first_day
from position_day
inner join kept_baselines
    on kept_baselines.position_id = position_day.position_id
    and kept_baselines.disease_type = position_day.disease_type
where {{ in_days_to_rebuild('position_day.date') }}
{%- endif %}
