-- Coverage counts add up: photographed ≤ field map, unreadable ≤ photographed, and every
-- position of the field map is either missing or has a readable photo.
select date, area
from {{ ref('coverage') }}
where positions_photographed > positions_in_field_map
    or unreadable_images > positions_photographed
    or positions_missing + positions_photographed - unreadable_images
        <> positions_in_field_map
