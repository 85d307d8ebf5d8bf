"""Where runs run on virtual machines: the Celery app of the workers and the instance's run
launcher (deploy/vm/dagster.yaml names it). Dagster instance plugins, never imported by a
code location."""
