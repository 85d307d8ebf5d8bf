-- Which grader version the effect estimate of each disease uses (issue 27): the estimand
-- across a grader switch.
--
-- Rule: the estimate stays on the version that has graded the trial's whole history. A
-- version's `complete_through` is the last date before its first gap: the latest date up
-- to which it graded every photo (position, date, on the active cropper) that any version
-- of that disease's grader graded. The estimate uses the version that is complete the
-- furthest; on a tie the active one, then the latest registered. So a new version switched
-- on mid-trial takes over only once its backfill covers every photo since the trial's
-- first day (`farm-platform models stale` / `backfill` list and fill the missing days);
-- until then the old version's grades carry the estimate, its baselines, its look count
-- and its error budget, and its estimate ends where the old version stopped grading.
--
-- Cheap in the usual case: a grader with one registered version is its active version
-- here without reading a single grade. Only the graders with more than one registered
-- version have their grades read (distinct photos per version); int_source_state
-- fingerprints this table, and a change of choice rebuilds every date (a backfill that
-- completes moves every baseline of that disease).
{{ config(materialized='table') }}
{#- Recorded at parse time, when the grades are not read yet (lineage: the grades feed this). -#}
{%- do source('farm', 'disease_grades') -%}
{%- set compared = [] -%}
{%- if execute -%}
    {%- set rows = run_query(
        "select model_id from " ~ ref('stg_model_versions')
        ~ " where task = 'disease_grader' group by model_id having count(*) > 1 order by 1"
    ) -%}
    {%- for row in rows.rows -%}
        {%- do compared.append(row[0]) -%}
    {%- endfor -%}
{%- endif %}
with registry as (
    select model_id, version, active, disease_type, registration_order
    from {{ ref('stg_model_versions') }}
    where task = 'disease_grader'
),

single as (
    -- Graders with one registered version: that version, when it is active.
    select
        registry.disease_type,
        registry.model_id as disease_model_id,
        registry.version as disease_model_version,
        cast(null as date) as complete_through,
        registry.version as active_version,
        cast(0 as bigint) as active_missing_photos,
        cast(null as date) as active_missing_from,
        cast(null as date) as active_missing_to
    from registry
    where registry.active
        and registry.model_id not in (
            select model_id from registry group by model_id having count(*) > 1
        )
)
{%- if compared %},

photos as (
    select distinct
        cast(grades.disease_type as text) as disease_type,
        cast(grades.disease_model_id as text) as disease_model_id,
        cast(grades.disease_model_version as text) as disease_model_version,
        cast(grades.position_id as text) as position_id,
        cast(grades.date as date) as date
    from {{ source('farm', 'disease_grades') }} as grades
    inner join {{ ref('stg_model_versions') }} as cropper
        on cropper.model_id = grades.cropper_model_id
        and cropper.version = grades.cropper_model_version
        and cropper.active
    where grades.disease_model_id in (
        {%- for model_id in compared %}'{{ model_id }}'{% if not loop.last %}, {% endif %}{% endfor -%}
    )
),

-- Every photo any version of the grader graded: the trial's history for that disease.
history as (
    select distinct disease_type, disease_model_id, position_id, date
    from photos
),

history_days as (
    select distinct disease_type, disease_model_id, date
    from history
),

versions as (
    select distinct disease_type, disease_model_id, disease_model_version
    from photos
),

-- The history's photos each version has not graded.
missing as (
    select
        versions.disease_type,
        versions.disease_model_id,
        versions.disease_model_version,
        history.date
    from versions
    inner join history
        on {{ keys_match('history', 'versions', ['disease_type', 'disease_model_id']) }}
    left join photos
        on {{ keys_match(
            'photos', 'versions', ['disease_type', 'disease_model_id', 'disease_model_version']
        ) }}
        and {{ keys_match('photos', 'history', ['position_id', 'date']) }}
    where photos.position_id is null
),

gaps as (
    select
        disease_type,
        disease_model_id,
        disease_model_version,
        count(*) as missing_photos,
        min(date) as first_gap,
        max(date) as last_gap
    from missing
    group by disease_type, disease_model_id, disease_model_version
),

ranked as (
    select
        versions.*,
        coalesce(gaps.missing_photos, 0) as missing_photos,
        gaps.first_gap,
        gaps.last_gap,
        (
            select max(history_days.date)
            from history_days
            where history_days.disease_type = versions.disease_type
                and history_days.disease_model_id = versions.disease_model_id
                and (gaps.first_gap is null or history_days.date < gaps.first_gap)
        ) as complete_through,
        coalesce(registry.active, false) as active,
        coalesce(registry.registration_order, 0) as registration_order
    from versions
    left join gaps
        on {{ keys_match(
            'gaps', 'versions', ['disease_type', 'disease_model_id', 'disease_model_version']
        ) }}
    inner join registry
        on registry.model_id = versions.disease_model_id
        and registry.version = versions.disease_model_version
),

chosen as (
    select
        ranked.*,
        row_number() over (
            partition by disease_type
            order by
                case when complete_through is null then 1 else 0 end,
                complete_through desc,
                case when active then 0 else 1 end,
                registration_order desc
        ) as choice
    from ranked
),

active_version as (
    select registry.disease_type, registry.model_id, registry.version
    from registry
    where registry.active
)

select
    chosen.disease_type,
    chosen.disease_model_id,
    chosen.disease_model_version,
    chosen.complete_through,
    active_version.version as active_version,
    -- The active version's share of the history still to backfill (it may have graded
    -- nothing yet: then every photo).
    coalesce(
        active_ranked.missing_photos,
        (select count(*) from history where history.disease_type = chosen.disease_type)
    ) as active_missing_photos,
    case
        when active_ranked.disease_model_version is null
            then (select min(date) from history where history.disease_type = chosen.disease_type)
        else active_ranked.first_gap
    end as active_missing_from,
    case
        when active_ranked.disease_model_version is null
            then (select max(date) from history where history.disease_type = chosen.disease_type)
        else active_ranked.last_gap
    end as active_missing_to
from chosen
left join active_version
    on active_version.disease_type = chosen.disease_type
left join ranked as active_ranked
    on active_ranked.disease_type = chosen.disease_type
    and active_ranked.disease_model_version = active_version.version
where chosen.choice = 1 and chosen.complete_through is not null

union all

-- A grader with several registered versions and no grades yet: its active version.
select
    registry.disease_type,
    registry.model_id,
    registry.version,
    cast(null as date),
    registry.version,
    cast(0 as bigint),
    cast(null as date),
    cast(null as date)
from registry
where registry.active
    and registry.model_id in (
        {%- for model_id in compared %}'{{ model_id }}'{% if not loop.last %}, {% endif %}{% endfor -%}
    )
    and registry.disease_type not in (select disease_type from photos)
{%- endif %}

{% if compared %}union all

{% endif -%}
select * from single
