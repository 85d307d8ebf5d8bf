"""The dbt project as dagster-dbt knows it.

Under `dagster dev` the manifest is parsed again whenever the definitions load
(`prepare_if_dev`); everywhere else it is built beforehand by
`dagster-dbt project prepare-and-package --file farm_platform/analytics/dbt_project.py`
(`make install` and the container image run it).
"""

from dagster_dbt import DbtProject

from farm_platform.analytics.dbt_env import DBT_PROJECT_DIR

# profiles.yml in the project is `dbt parse`'s (an in-memory DuckDB); builds run with the
# profile the definitions write from FARM_WAREHOUSE (dbt_env.write_dbt_profile).
farm_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
farm_dbt_project.prepare_if_dev()
