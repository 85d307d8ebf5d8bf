-- The 95 % interval is centred on the effect and never inverted.
select disease_type, date, effect, ci_low, ci_high
from {{ ref('treatment_effect') }}
where ci_low is not null
    and (ci_low > effect or ci_high < effect or std_error < 0)
