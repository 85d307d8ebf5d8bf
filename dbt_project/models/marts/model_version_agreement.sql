-- How often two versions of a grader agree on the leaves both graded: the per-day counts
-- of int_version_pairs_by_day summed over the dates (a few rows per day and pair).
{%- set by = [
    'disease_type', 'disease_model_id', 'version_a', 'version_b', 'version_a_active',
    'version_b_active',
] %}
select
    {{ by | join(',\n    ') }},
    cast(sum(n) as bigint) as leaves_compared,
    cast(sum(case when grade_a = grade_b then n else 0 end) as bigint) as leaves_agreeing,
    cast(sum(case when grade_a = grade_b then n else 0 end) as double precision)
        / sum(n) as agreement_rate,
    cast(sum(grade_a * n) as double precision) / sum(n) as mean_grade_a,
    cast(sum(grade_b * n) as double precision) / sum(n) as mean_grade_b,
    cast(sum((grade_b - grade_a) * n) as double precision) / sum(n) as mean_grade_difference,
    min(date) as first_date,
    max(date) as last_date
from {{ ref('int_version_pairs_by_day') }}
group by {{ by | join(', ') }}
