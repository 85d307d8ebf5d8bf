-- Confusion counts (long form) between two versions of a grader on the same leaves: the
-- per-day counts of int_version_pairs_by_day summed over the dates.
{%- set by = ['disease_type', 'disease_model_id', 'version_a', 'version_b', 'grade_a', 'grade_b'] %}
select
    {{ by | join(',\n    ') }},
    cast(sum(n) as bigint) as n
from {{ ref('int_version_pairs_by_day') }}
group by {{ by | join(', ') }}
