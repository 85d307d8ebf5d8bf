"""The Celery app of the production topology's run workers (`celery -A` this module).

Dagster's `CeleryRunLauncher` (dagster-celery) sends each run as a Celery task; these are
the same tasks (`create_execute_job_task`), registered on an app whose broker comes from
`FARM_CELERY_BROKER` in the environment. (`dagster-celery worker start` would write the
broker URL, password included, into a file under DAGSTER_HOME.) A worker executes a whole
run in its process with the run's default executor: the Celery launcher is not combined with
the Celery executor, which Dagster's own issues report broken.
"""

from __future__ import annotations

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

from farm_platform.config import FARM_CELERY_BROKER, require
from farm_platform.images.run_tags import IMAGES_QUEUE

BROKER = require(FARM_CELERY_BROKER, "the production topology's Redis URL, with its password")
app = make_app(
    {
        "broker": BROKER,
        "backend": BROKER,
        "include": [],
        "config_source": {},
        "task_default_queue": IMAGES_QUEUE,
    }
)
# A run's steps write to stdout and stderr, which Dagster's compute log manager captures at
# the file descriptors; Celery's default swaps sys.stdout/stderr for its logger, so every
# step's captured log would be empty and the output only in the worker's own log.
app.conf.worker_redirect_stdouts = False
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
