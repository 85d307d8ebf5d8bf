"""Developer commands of `farm-platform`: the local stack, the simulated farm, the demo
and the data-quality gate."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from farm_platform import config
from farm_platform.admin.commands import date_arg
from farm_platform_dev.emulators import StackError

# The dev commands' expected failures: `farm-platform` reports them in one line.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (StackError,)


def _print_environment(environment: dict[str, str]) -> None:
    for name, value in environment.items():
        print(f"export {name}={value}")


def _stack(args: argparse.Namespace) -> int:
    from farm_platform_dev import production, stack

    state_dir = (Path(args.state_dir) if args.state_dir else stack.default_state_dir()).resolve()
    if args.action == "up":
        if args.production:
            production.credentials()  # before anything starts
        info = stack.stack_up(
            state_dir,
            project=args.project,
            bucket=args.bucket,
            pubsub_port=args.pubsub_port,
            gcs_port=args.gcs_port,
            model_server=args.model_server,
        )
        if args.production:
            topology = production.production_up(
                state_dir,
                info.environment(),
                args.replicas,
                args.max_concurrent_runs,
                runs_per_day=args.runs_per_day,
            )
            print(f"# production topology: logs in {state_dir}")
            _print_webservers(topology)
        if info.oip_url:
            print(f"# model server: {info.oip_url} (log: {info.state_dir / 'model-server.log'})")
        print(f"# local stack running (state in {info.state_dir}); point the platform at it with:")
        print(f'#   eval "$(farm-platform stack env{_state_dir_flag(args)})"')
        _print_environment(_shell_environment(info))
    elif args.action == "env":
        _print_environment(_shell_environment(stack.load_stack(state_dir)))
        topology = production.load_production(state_dir)
        if topology is not None:
            _print_webservers(topology)
    elif args.action == "status":
        from farm_platform_dev.watchdog import topology_status

        lines, healthy = topology_status(state_dir)
        print("\n".join(lines))
        return 0 if healthy else 1
    elif args.action == "watch":
        from farm_platform_dev.watchdog import watch

        return watch(state_dir)
    else:
        topology_stopped = production.production_down(state_dir)
        stopped = stack.stack_down(state_dir) or topology_stopped
        if stopped:
            print("local stack stopped")
        else:
            hint = stack.elsewhere_hint(state_dir)
            print(f"no local stack was running in {state_dir}" + (f"; {hint}" if hint else ""))
    return 0


def _print_webservers(topology: Any) -> None:
    print(f"# Dagster UI for operators (launch, cancel, wipe): {topology.webserver_url}")
    print(f"# Dagster UI for viewers (read-only): {topology.viewer_url}")


def _shell_environment(info: Any) -> dict[str, str]:
    """The stack's variables, plus a field map of its own: a farm simulated against this
    stack writes its positions there, and the platform pointed at the stack reads them.
    With a production topology, its variables too; the password stays a reference to
    $FARM_PG_PASSWORD, expanded by the shell that evaluates these lines."""
    from farm_platform_dev.production import PG_PASSWORD, load_production

    environment = {
        **info.environment(),
        config.FARM_FIELD_MAP: str(info.state_dir / "positions.csv"),
    }
    topology = load_production(info.state_dir)
    if topology is not None:
        environment.update(topology.environment("${" + PG_PASSWORD + "}"))
    return environment


def _state_dir_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {args.state_dir}" if args.state_dir else ""


def _farm_config(args: argparse.Namespace):
    from farm_platform_dev.simulate import FarmConfig

    return FarmConfig(
        positions=args.positions,
        days=args.days,
        start_date=args.start_date,
        seed=args.seed,
        effect=args.effect,
        layout=args.layout,
        gradient=args.gradient,
    )


def _simulate(args: argparse.Namespace) -> int:
    from farm_platform.layout import check_bucket
    from farm_platform_dev.simulate import DroneMessagePublisher, write_farm

    bucket_url = config.bucket_url(
        args.bucket
        or config.require(
            config.FARM_BUCKET,
            'pass --bucket, or for the local stack: eval "$(farm-platform stack env)"',
        )
    )
    check_bucket(bucket_url)
    publisher = None
    if args.publish:
        project = config.require(config.FARM_GCP_PROJECT, "--publish needs the emulator's env")
        publisher = DroneMessagePublisher(project)
    truth_url = args.truth or str(Path(".farm/ground_truth").resolve())
    field_map = Path(args.field_map) if args.field_map else config.simulated_field_map_path()
    summary = write_farm(_farm_config(args), bucket_url, field_map, publisher, truth_url)
    print(
        f"simulated {summary.images} images with {summary.leaves} leaves into {summary.bucket_url}"
        f" in {summary.elapsed_seconds:.1f} s\n  field map: {summary.field_map_path}\n"
        f"  ground truth: {summary.truth_url}\n  drone messages published: {summary.published}"
    )
    if str(field_map) != str(config.field_map_path()):
        print(f"  point the platform at this farm's field map: export FARM_FIELD_MAP={field_map}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from farm_platform_dev.demo import run_demo

    return run_demo(
        _farm_config(args),
        workdir=Path(args.workdir),
        keep=args.keep,
        model_server=args.model_server,
    )


def _check(args: argparse.Namespace) -> int:
    from farm_platform_dev.gate import run_gate

    return run_gate(workdir=Path(args.workdir) if args.workdir else None)


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def add_farm_options(
    parser: argparse.ArgumentParser, positions: int, days: int, layout: str = "two-areas"
) -> None:
    from farm_platform_dev.simulate.farm import LAYOUTS

    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=layout,
        help="how the arms are assigned: two areas (control west, treated east: the founding "
        "design), randomised, or randomised within blocks of two neighbours, as `trial "
        "design` writes (default: %(default)s)",
    )
    parser.add_argument(
        "--gradient",
        type=float,
        default=0.0,
        help="extra disease progression per day at the west area's centre over the east's, "
        "linear across the field (light, heating, airflow; default: %(default)s)",
    )
    parser.add_argument(
        "--positions",
        type=positive_int,
        default=positions,
        help="positions, half of them treated (default: %(default)s)",
    )
    parser.add_argument(
        "--days", type=positive_int, default=days, help="days photographed (default: %(default)s)"
    )
    parser.add_argument(
        "--start-date",
        type=date_arg,
        default=dt.date(2026, 6, 1),
        metavar="YYYY-MM-DD",
        help="first day photographed (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same farm (default: 0)"
    )
    parser.add_argument(
        "--effect",
        type=float,
        default=0.15,
        help="true treatment effect: extra drop of disease severity per day in the treated "
        "area (default: %(default)s)",
    )


def add_dev_commands(commands: Any) -> None:
    from farm_platform_dev.heldout_export import add_heldout_command
    from farm_platform_dev.hosts_command import add_hosts_command

    _add_stack_command(commands)
    add_hosts_command(commands)
    _add_farm_commands(commands)
    add_heldout_command(commands)


def _add_stack_command(commands: Any) -> None:
    stack_parser = commands.add_parser(
        "stack", help="the local Pub/Sub and GCS emulators, with topics, subscriptions, bucket"
    )
    stack_parser.add_argument(
        "action",
        choices=["up", "down", "env", "status", "watch"],
        help="up: start them (or repair a half-dead stack in place); down: stop them; "
        "env: print the variables that point the platform at them; status: each process of "
        "the production topology (running, dead, or a code server that does not answer) and "
        "the photos waiting in the arrival queue (exit 1 unless all runs); watch: the production "
        "topology's watchdog (`up --production` starts it), which replaces a code server "
        "that stops answering",
    )
    stack_parser.add_argument(
        "--state-dir",
        help="where the stack keeps pids and logs (default: $FARM_STACK_DIR or ./.farm/stack)",
    )
    stack_parser.add_argument(
        "--project", default="farm-local", help="Pub/Sub project id (default: %(default)s)"
    )
    stack_parser.add_argument(
        "--bucket", default="farm-images", help="bucket name (default: %(default)s)"
    )
    stack_parser.add_argument("--pubsub-port", type=int, help="Pub/Sub port (default: a free one)")
    stack_parser.add_argument("--gcs-port", type=int, help="GCS port (default: a free one)")
    stack_parser.add_argument(
        "--model-server",
        action="store_true",
        help="up: also start a model server (`models serve`; the serve extra) and send the "
        "stack's inference to it (FARM_INFERENCE=oip in `stack env`)",
    )
    stack_parser.add_argument(
        "--production",
        action="store_true",
        help="up: also start the production topology: PostgreSQL (instance storage and "
        "warehouse), a gRPC code server per code location, dagster-daemon, two guarded "
        "dagster-webservers (operators', viewers' read-only), "
        "Redis and two Celery run workers, and model-server replicas; needs FARM_PG_PASSWORD, "
        "FARM_REDIS_PASSWORD and FARM_OIP_TOKEN exported",
    )
    stack_parser.add_argument(
        "--replicas", type=int, default=2, help="model-server replicas (default: %(default)s)"
    )
    stack_parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=4,
        help="the production run queue's limit (default: %(default)s)",
    )
    stack_parser.add_argument(
        "--runs-per-day",
        type=int,
        default=None,
        help="the production topology's runs of one day partition at once: the sensor's "
        "runs grade disjoint photos side by side, a whole-day run waits for the day's "
        "PostgreSQL lock (default: --max-concurrent-runs; 1 is one run per day as on DuckDB)",
    )
    stack_parser.set_defaults(handler=_stack)


def _add_farm_commands(commands: Any) -> None:
    simulate_parser = commands.add_parser(
        "simulate", help="render a synthetic farm's photos into a bucket"
    )
    add_farm_options(simulate_parser, positions=8, days=3)
    simulate_parser.add_argument(
        "--bucket", help=f"bucket URL, gs:// or file:// (default: ${config.FARM_BUCKET})"
    )
    simulate_parser.add_argument(
        "--field-map",
        default=None,
        help=f"write the farm's positions.csv here (default: ${config.FARM_FIELD_MAP}, else "
        "./.farm/positions.csv; never the tracked dbt seed)",
    )
    simulate_parser.add_argument(
        "--truth",
        help="where the ground-truth Parquet goes (default ./.farm/ground_truth; kept out of "
        "the bucket so that the bucket notifies exactly one message per photo)",
    )
    simulate_parser.add_argument(
        "--publish",
        action="store_true",
        help="also publish the drone-controller message for each image on drone_image",
    )
    simulate_parser.set_defaults(handler=_simulate)

    demo_parser = commands.add_parser(
        "demo", help="the main job end to end on a local stack (what `make demo` runs)"
    )
    # 16 positions (8 blocks) over 3 days: the headline can call a working medicine, and
    # the demo grades about as many photos, in fewer day runs, as 8 positions over 5 days.
    add_farm_options(demo_parser, positions=16, days=3, layout="blocks")
    demo_parser.add_argument(
        "--workdir", default=".farm/demo", help="demo state and outputs (default: %(default)s)"
    )
    demo_parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the local stack up afterwards and print a command that opens the "
        "Dagster UI on the demo",
    )
    demo_parser.add_argument(
        "--model-server",
        action="store_true",
        help="grade on a model server started beside the stack (the serve extra) instead of "
        "in each run",
    )
    demo_parser.set_defaults(handler=_demo)

    check_parser = commands.add_parser(
        "check", help="data-quality gate: suites + dbt tests on a clean and a corrupted farm"
    )
    check_parser.add_argument("--workdir", help="keep the simulated farm here (default: temp)")
    check_parser.set_defaults(handler=_check)
