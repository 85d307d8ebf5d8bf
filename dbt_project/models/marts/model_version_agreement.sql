-- How often two versions of a grader agree on the leaves both graded.
select
    disease_type,
    disease_model_id,
    version_a,
    version_b,
    version_a_active,
    version_b_active,
    count(*) as leaves_compared,
    sum(case when grade_a = grade_b then 1 else 0 end) as leaves_agreeing,
    cast(sum(case when grade_a = grade_b then 1 else 0 end) as double precision)
        / count(*) as agreement_rate,
    avg(cast(grade_a as double precision)) as mean_grade_a,
    avg(cast(grade_b as double precision)) as mean_grade_b,
    avg(cast(grade_b - grade_a as double precision)) as mean_grade_difference,
    min(date) as first_date,
    max(date) as last_date
from {{ ref('int_grade_version_pairs') }}
group by
    disease_type,
    disease_model_id,
    version_a,
    version_b,
    version_a_active,
    version_b_active
