-- Difference in differences per disease and date over the active grades, positions as the
-- unit (see the model description in _marts.yml for the estimator and why), from the
-- baselines position_trajectories stores.
--
-- Incremental: a build replaces the dates effect_days_to_rebuild() names (the changed
-- days and every date of a curve position_trajectories reset); a date's estimate depends
-- only on that date's trajectory rows and on the disease's first date.
{{ incremental_by_day(days_macro='effect_days_to_rebuild') }}
{{ treatment_effect_estimate(
    ref('position_trajectories'),
    ['disease_type'],
    stored_baselines=true,
    rows_filter=changed_days_filter('date', effect_days_to_rebuild()),
) }}
