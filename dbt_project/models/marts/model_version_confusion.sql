-- Confusion counts (long form) between two versions of a grader on the same leaves.
select
    disease_type,
    disease_model_id,
    version_a,
    version_b,
    grade_a,
    grade_b,
    count(*) as n
from {{ ref('int_grade_version_pairs') }}
group by
    disease_type,
    disease_model_id,
    version_a,
    version_b,
    grade_a,
    grade_b
