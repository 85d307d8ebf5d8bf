"""The production topology on this machine (`farm-platform stack up --production`): Dagster's
instance on PostgreSQL, a gRPC code server per code location, the daemon and webserver as
their own processes, two model-server replicas behind one FARM_OIP_URL, and the warehouse
on PostgreSQL, runs launched as Celery tasks on two workers (Redis as the broker). A day is
graded end to end through it, and again after a code server was killed mid-run and the
topology repaired by `stack up`; the daemon is killed -9 and restarted; the sensor's runs of
one day grade side by side while a whole-day run of it waits for them. A Celery worker and
Redis killed mid-run are in test_production_faults.py (`make test-faults`). The topology and
the helpers are production_topology.py's.
"""

from __future__ import annotations

import time

import pytest
from dagster import DagsterRunStatus, RunsFilter
from production_topology import (
    Topology,
    farm_day,
    first_said_at,
    graded_rows_per_photo,
    grades_held,
    repair_topology,
    runs_of_day,
    topology_fixture,  # noqa: F401 (the fixture `topology`)
    wait_for,
)

from farm_platform import config
from farm_platform.images.run_tags import (
    CELERY_QUEUE_TAG,
    IMAGES_QUEUE,
    PHOTOS_TAG,
)
from farm_platform_dev.daemon import sensor_ticks, wait_for_photos
from farm_platform_dev.processes import child_pids, kill_now, listening_addresses, pid_alive
from farm_platform_dev.production import (
    dead_processes,
    production_down,
    read_production,
)
from farm_platform_dev.ui import launch_day_run

pytestmark = pytest.mark.slow


def test_the_topology_runs_on_the_deploy_vm_artifacts(topology):
    """`stack up --production` starts from deploy/vm/: its instance and workspace are the
    artifacts filled in for this machine, and its Celery workers run as workers.yaml says."""
    from farm_platform_dev.processes import command_line
    from farm_platform_dev.vm_artifacts import instance_config, workspace_config

    production = topology.production
    bucket = topology.environment[config.FARM_BUCKET]
    # Every Dagster process reaches PostgreSQL through the topology's PgBouncer.
    port = production.pooler_port
    instance = instance_config(port, 4, 4, quick_polling=True, bucket=bucket)
    assert (production.dagster_home / "dagster.yaml").read_text() == instance
    assert production.workspace.read_text() == workspace_config(production.code_server_ports)
    worker = command_line(topology.pids()["worker:images"])
    assert "farm_platform.launcher.celery_app" in worker and "-c 4" in worker


def test_a_day_is_graded_through_the_production_topology(topology):
    photos = topology.photograph_day(0, positions=4, seed=41)
    with topology.instance() as instance:
        wait_for_photos(instance, topology.warehouse, photos, 420)
        # Dagster's own storage is PostgreSQL, not SQLite files in DAGSTER_HOME.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert f":{topology.production.pooler_port}/" in instance.run_storage.postgres_url
        runs = [
            record.dagster_run
            for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
            if PHOTOS_TAG in record.dagster_run.tags
        ]
        assert runs
        said = {
            event.message
            for run in runs
            for event in instance.all_logs(run.run_id)
            if "models on the model server" in (event.message or "")
        }
        assert said, "the image runs did not grade on the model servers"
        assert all(topology.environment[config.FARM_OIP_URL] in message for message in said)
        # Each image run was a Celery task, routed to the images worker by its queue tag.
        assert all(run.tags.get(CELERY_QUEUE_TAG) == IMAGES_QUEUE for run in runs)
        assert all(run.tags.get("dagster-celery/task_id") for run in runs)
    worker_log = (topology.state_dir / "worker-images.log").read_text()
    for run in runs:
        assert f"[{run.tags['dagster-celery/task_id']}] succeeded" in worker_log, run.run_id
    # Each photo's grades once: 5 diseases for each of its leaves.
    per_photo = graded_rows_per_photo(topology)
    assert len(per_photo) == photos
    assert all(n % 5 == 0 and n > 0 for n in per_photo.values())
    assert not list((topology.production.dagster_home).glob("*.db")), "SQLite storage appeared"
    assert pid_alive(topology.pids()["watchdog"]), "stack up started no watchdog"
    # Every process binds loopback only.
    ports = [topology.production.pg_port, topology.production.webserver_port]
    ports += [topology.production.viewer_webserver_port, topology.production.pooler_port]
    ports += list(topology.production.code_server_ports.values())
    ports += topology.production.replica_grpc_ports
    for port in ports:
        assert listening_addresses(port) == {"127.0.0.1"}, port


def test_the_webservers_refuse_forged_mutations_and_the_viewers_cannot_act(topology, capsys):
    """Issue 40.4: the operators' and the viewers' webservers refuse a mutation sent by GET
    and one from a page of another origin (a DNS-rebound one too: its Host agrees with its
    Origin); the UI's own POST reaches Dagster, which lets only the operators' act."""
    from urllib.parse import urlencode

    from test_webserver_guard import EVIL, send

    operators, viewers = topology.production.webserver_url, topology.production.viewer_url
    launch = (
        "mutation { launchRun(executionParams: { selector: { repositoryLocationName: "
        f'"{config.IMAGE_LOCATION}", repositoryName: "__repository__", jobName: "no_such_job" '
        "} }) { __typename } }"
    )
    launched = {}
    for base in (operators, viewers):
        assert send(f"{base}/graphql?" + urlencode({"query": launch}))[0] == 405
        assert send(f"{base}/graphql", {"query": launch}, {"Origin": EVIL})[0] == 403
        rebound = f"evil.example:{base.rsplit(':', 1)[1]}"
        headers = {"Origin": f"http://{rebound}", "Host": rebound}
        assert send(f"{base}/graphql", {"query": launch}, headers)[0] == 403
        own = {"Origin": base.replace("127.0.0.1", "localhost")}
        status, answer = send(f"{base}/graphql", {"query": launch}, own)
        assert status == 200, answer
        launched[base] = answer["data"]["launchRun"]["__typename"]
    assert launched == {operators: "PipelineNotFoundError", viewers: "UnauthorizedError"}
    for name in ("webserver", "viewer_webserver"):
        assert "refused POST /graphql" in (topology.state_dir / f"{name}.log").read_text()
    # `stack env` tells which address is which.
    from farm_platform.cli import main

    assert main(["stack", "env", "--state-dir", str(topology.state_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"operators (launch, cancel, wipe): {operators}\n" in printed
    assert f"viewers (read-only): {viewers}\n" in printed


def test_a_code_server_killed_mid_run_is_repaired_and_loses_nothing(topology):
    """kill -9 of the image location's code server while a day is graded; `stack up`
    restarts it in place, and every photo is graded once, whatever became of the run the
    dead server had launched (run monitoring fails an orphan, the requeue sensor hands its
    photos back)."""
    before = graded_rows_per_photo(topology)
    photos = topology.photograph_day(1, positions=4, seed=43)
    with topology.instance() as instance:
        deadline = time.monotonic() + 300
        while not instance.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=1
        ):
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.2)
        victim = topology.pids()["code_server:farm_platform"]
        # The code server and the process it serves from, as when its machine is lost
        # (killing the proxy alone left that child running for ~60 s more).
        kill_now([victim, *child_pids(victim)])
        assert not pid_alive(victim)
        assert "code_server:farm_platform" in dead_processes(
            read_production(topology.state_dir), topology.state_dir
        )
        repair_topology(topology)
        assert topology.pids()["code_server:farm_platform"] != victim
        wait_for_photos(
            instance, topology.warehouse, len(before) + photos, 600, tolerate_failed_runs=True
        )
    after = graded_rows_per_photo(topology)
    assert len(after) == len(before) + photos
    assert all(n % 5 == 0 and n > 0 for n in after.values())


def test_a_daemon_killed_and_restarted_keeps_its_sensor_state_in_postgresql(topology):
    """kill -9 of the one daemon; `stack up --production` starts one again. The tick history
    is still in PostgreSQL, the sensors go on ticking, and a new day is graded."""
    with topology.instance() as instance:
        before = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert before, "the sensor never ticked"
        victim = topology.pids()["daemon"]
        kill_now([victim])
        repair_topology(topology)
        assert topology.pids()["daemon"] != victim
        after = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert {t.tick_id for t in before} <= {t.tick_id for t in after}
        graded = len(graded_rows_per_photo(topology))
        photos = topology.photograph_day(2, positions=4, seed=47)
        wait_for_photos(instance, topology.warehouse, graded + photos, 420)
        newer = sensor_ticks(instance, "drone_image_sensor", limit=1000)
        assert max(t.tick_id for t in newer) > max(t.tick_id for t in after)


def test_runs_of_one_day_grade_side_by_side_and_a_whole_day_run_never_beside_them(topology):
    """Four runs of one day at once: the sensor's three runs of a 9-photo day, and a
    whole-day run (UI "Materialize" through the webserver) started while they grade. An
    outside writer holds the grades table (a SHARE lock: reads go on, writes wait), so the
    sensor's runs grade and then wait to commit, and the whole-day run surely arrives while
    they run. From the runs' own events: the sensor's runs graded at the same time, the
    whole-day run graded none of its photos while any of them did; then every photo of
    the day has its rows once."""
    day = farm_day(3).isoformat()
    graded_before = len(graded_rows_per_photo(topology))
    with topology.instance() as instance:
        with grades_held(topology):
            photos = topology.photograph_day(3, positions=9, seed=53)
            assert photos == 9
            sensor_runs = _sensor_runs_grading(instance, topology, day)
            whole_day = launch_day_run(topology.production.webserver_url, day)
            kept_out = _four_runs_grading_and_the_whole_day_run_kept_out(
                instance, topology, day, sensor_runs, whole_day
            )
        wait_for_photos(
            instance, topology.warehouse, graded_before + photos, 300, tolerate_failed_runs=True
        )
        spans = _grading_spans(instance, [*sensor_runs, instance.get_run_by_id(whole_day)])
    sensor_spans = [spans[run.run_id] for run in sensor_runs]
    # The sensor's runs graded side by side: all three were grading at once.
    assert max(begin for begin, _ in sensor_spans) < min(end for _, end in sensor_spans)
    # The whole-day run (every photo of the day) began grading after the last of them
    # committed, though it started while they graded.
    begin, _ = spans[whole_day]
    assert begin > max(end for _, end in sensor_spans), (spans, whole_day)
    assert kept_out == 1, "no run waited for the day's exclusive grading lock"
    positions = [
        set(run.run_config["ops"]["image_pipeline"]["config"]["positions"]) for run in sensor_runs
    ]
    assert sum(len(p) for p in positions) == 9 and len(set().union(*positions)) == 9
    # Every photo of the day graded, its rows once (the key never repeats).
    rows = topology.warehouse.query(
        "SELECT count(*) AS n, count(DISTINCT (position_id, leaf_crop_idx, disease_type,"
        " cropper_model_version, disease_model_version)) AS keys,"
        " count(DISTINCT position_id) AS photos FROM disease_grades WHERE date = %s",
        [farm_day(3)],
    ).row(0, named=True)
    assert rows["photos"] == 9 and rows["n"] == rows["keys"] > 0


def _sensor_runs_grading(instance, topology: Topology, day: str) -> list:
    """The sensor's three runs of the day's 9 photos, once each has begun grading."""
    from farm_platform.images.pipeline import GRADING_STARTED

    def claimed() -> list | None:
        runs = runs_of_day(instance, day)
        return runs if sum(int(run.tags[PHOTOS_TAG]) for run in runs) >= 9 else None

    # This wait ran past 120 s in CI (2026-12-04) and past 300 s on 2026-12-05: a
    # tick that saw part of the day claimed a batch, whose run then waited to commit
    # holding the day's write lock, and the next tick hung recording the rest on
    # that lock (fixed; test_warehouse has the case). Then past 300 s in about one
    # full run in four: a tick that had read the 4-position field map before this
    # farm's rewrote it dead-lettered 5 of the 9 photos (fixed: the sensor reads the
    # map after pulling; test_ingest has the case). A timeout prints every tick that
    # pulled something, and the sensor's log.
    sensor_runs = wait_for(
        claimed, 300, "the sensor's runs of the day's 9 photos", instance, topology
    )
    assert len(sensor_runs) == 3, "the 9 photos were not claimed as 3 batches of 3"
    for run in sensor_runs:
        wait_for(
            lambda run=run: first_said_at(instance, run.run_id, GRADING_STARTED),
            120,
            f"sensor run {run.run_id} grading",
        )
    return sensor_runs


def _four_runs_grading_and_the_whole_day_run_kept_out(
    instance, topology: Topology, day: str, sensor_runs: list, whole_day: str
) -> int:
    """Once the whole-day run is in its op: four runs of the day started, none committed.
    Returns how many exclusive requests on the day's grading lock PostgreSQL holds back."""
    from farm_platform.images.pipeline import GRADING_COMMITTED, GRADING_STARTED, LOCK_WAITING
    from farm_platform.resources.warehouse import DAY_GRADING_LOCK_PREFIX

    # The whole-day run is in its op: waiting for the day, or (were it not kept
    # out) grading beside the sensor's runs, which the spans below would show.
    wait_for(
        lambda: (
            first_said_at(instance, whole_day, LOCK_WAITING)
            or first_said_at(instance, whole_day, GRADING_STARTED)
        ),
        120,
        "the whole-day run's op",
    )
    # Four runs of the day at once, none of them has committed yet.
    started = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={"dagster/partition": day})
    )
    assert len(started) == 4, [r.dagster_run.run_id for r in started]
    assert not any(first_said_at(instance, r.run_id, GRADING_COMMITTED) for r in sensor_runs)
    # PostgreSQL holds an exclusive request on the day's grading lock back.
    return topology.warehouse.query(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND mode = 'ExclusiveLock' AND objid = (hashtext(%s)::bigint & 4294967295)::oid",
        [f"{DAY_GRADING_LOCK_PREFIX}{day}"],
    )["n"][0]


def _grading_spans(instance, runs: list) -> dict[str, tuple]:
    """Each run's (grading started, grading committed) event times; fails on a run that did
    not succeed, with its last log lines."""
    from farm_platform.images.pipeline import GRADING_COMMITTED, GRADING_STARTED

    failures = {
        run.run_id: [e.user_message for e in instance.all_logs(run.run_id)][-6:]
        for run in runs
        if instance.get_run_by_id(run.run_id).status != DagsterRunStatus.SUCCESS
    }
    assert not failures, failures
    return {
        run.run_id: (
            first_said_at(instance, run.run_id, GRADING_STARTED),
            first_said_at(instance, run.run_id, GRADING_COMMITTED),
        )
        for run in runs
    }


def test_stack_down_stops_every_process_of_the_topology(topology):
    pids = topology.pids()
    assert production_down(topology.state_dir)
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert read_production(topology.state_dir) is None
