-- Difference in differences per disease and date over the active grades, positions as the
-- unit (see the model description in _marts.yml for the estimator and why).
{{ treatment_effect_estimate(ref('position_trajectories'), ['disease_type']) }}
