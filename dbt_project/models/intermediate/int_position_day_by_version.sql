-- Each position's mean grade per date, disease and grader version, on the crops of the
-- active cropper, less the partitions held back by a failed blocking check: the same
-- inputs as position_trajectories, once for every grader version that graded them.
select
    grades.position_id,
    positions.area,
    grades.date,
    grades.disease_type,
    grades.disease_model_id,
    grades.disease_model_version,
    count(*) as leaves,
    avg(cast(grades.predicted_grade as double precision)) as mean_grade
from {{ ref('stg_disease_grades') }} as grades
inner join {{ ref('stg_positions') }} as positions
    on positions.position_id = grades.position_id
where grades.cropper_is_active
    and not exists (
        select 1
        from {{ ref('held_back_partitions') }} as held
        where held.position_id = grades.position_id
            and held.date = grades.date
            and held.disease_type = grades.disease_type
    )
group by
    grades.position_id,
    positions.area,
    grades.date,
    grades.disease_type,
    grades.disease_model_id,
    grades.disease_model_version
