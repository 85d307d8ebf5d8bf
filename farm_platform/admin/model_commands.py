"""`farm-platform models`: register, push, list, activate, serve and reload model versions,
and the stale partitions a new version leaves (docs/models.md, "A new model version")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from farm_platform import config, config_values
from farm_platform.admin.instance import open_instance
from farm_platform.config import ConfigError


def non_negative_float(value: str) -> float:
    """An argparse type: a number of at least 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 0")
    return number


def add_model_commands(commands: Any) -> None:
    from farm_platform.admin import evaluation_commands
    from farm_platform.config import FARM_MODELS_DIR

    models_parser = commands.add_parser("models", help="register, list, activate model versions")
    models_parser.add_argument(
        "--models-dir",
        default=None,
        help=f"models folder, or a bucket folder gs://BUCKET/models (default: ${FARM_MODELS_DIR} "
        "or ./models)",
    )
    model_actions = models_parser.add_subparsers(dest="action", required=True)
    add_parser = model_actions.add_parser("add", help="validate and register a model folder")
    add_parser.add_argument("path", help="folder with card.json and the weights")
    add_parser.add_argument(
        "--activate", action="store_true", help="also make it the live version (gated)"
    )
    add_parser.add_argument("--reason", default=None, help="with --activate --force")
    model_actions.add_parser("list", help="every registered version (* = active)")
    push_parser = model_actions.add_parser(
        "push",
        help="copy a local models folder's versions (validated) and active versions to "
        "--models-dir, e.g. a bucket; registry last",
    )
    push_parser.add_argument("source", help="local models folder, e.g. models")
    activate_parser = model_actions.add_parser("activate", help="make a version the live one")
    activate_parser.add_argument("model_id", help="e.g. disease_3_grader (see `models list`)")
    activate_parser.add_argument("version", help="a registered version, e.g. v2")
    for parser in (add_parser, activate_parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="activate although worse than the active version on a registered "
            "evaluation dataset (needs --reason, which is recorded)",
        )
    activate_parser.add_argument("--reason", default=None, help="why, with --force (recorded)")
    stale_parser = model_actions.add_parser(
        "stale", help="stale partitions, from Dagster ($DAGSTER_HOME)"
    )
    stale_parser.add_argument(
        "--asset", action="append", help="asset key (repeatable); default all"
    )
    stale_parser.add_argument("--limit", type=int, default=20, help="partitions shown per asset")
    serve_parser = model_actions.add_parser(
        "serve", help="Open Inference Protocol server of the active models (serve extra)"
    )
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address REST and gRPC listen on (0.0.0.0: every interface, e.g. in a pod)",
    )
    serve_parser.add_argument("--port", type=int, default=8080, help="REST port")
    serve_parser.add_argument("--grpc-port", type=int, default=8081, help="gRPC port")
    serve_parser.add_argument(
        "--plain",
        action="append",
        default=[],
        metavar="MODEL_ID:VERSION=NAME:SERVED_VERSION",
        help="also serve that version plain, as KServe or Triton would (its own tensors "
        "INPUT__0, OUTPUT__<i>): to try an external_oip card against (docs/models.md)",
    )
    serve_parser.add_argument(
        "--watch-seconds",
        type=float,
        default=config.DEFAULT_REGISTRY_WATCH_SECONDS,
        help="how often the server checks the registry for a new active version (0: never)",
    )
    serve_parser.add_argument(
        "--emulate-batch-ms",
        type=non_negative_float,
        default=0.0,
        help="benchmarks only: serve one batch at a time and hold each for at least this "
        "long, as a remote accelerator would (benchmarks/scale_out.py)",
    )
    reload_parser = model_actions.add_parser(
        "reload", help="make a running model server load the registry's active versions"
    )
    reload_parser.add_argument("--url", default=None, help=f"default: ${config.FARM_OIP_URL}")
    evaluation_commands.add_parsers(model_actions)
    models_parser.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    from farm_platform.admin import evaluation_commands
    from farm_platform.admin import model_versions as model_admin
    from farm_platform.admin.configured import configured_registry

    registry = configured_registry(args.models_dir)
    if args.action in evaluation_commands.ACTIONS:
        return evaluation_commands.run(args, registry)
    if args.action == "add":
        added = model_admin.add_model(Path(args.path), registry)
        card = added.card
        print(f"registered {card.id} {card.version} at {added.path}")
        # An exported model's check is its contract's, on a probe batch (ml/probe.py).
        what = "contract on a probe batch" if card.contract else "dummy forward pass"
        # An external_oip card has no file: its sha256 is of what it declares.
        checked = "its server answers" if card.external else "verified; loads"
        print(f"  sha256 {card.sha256} {checked}; {what}: {added.check}")
        # Evaluated on every registered dataset; --activate then goes through the gate.
        evaluation_commands.after_add(registry, card)
        if args.activate:
            evaluation_commands.activate(args, registry, card.id, card.version)
        else:
            print(
                "  not active; activate with: "
                f"farm-platform models activate {card.id} {card.version}"
            )
    elif args.action == "push":
        pushed = model_admin.push_models(Path(args.source), registry)
        for added in pushed.added:
            print(f"uploaded {added.card.id} {added.card.version} to {added.path} ({added.check})")
        for name in pushed.already_there:
            print(f"already there: {name} (same sha256)")
        active = ", ".join(f"{m} {v}" for m, v in sorted(pushed.active.items()))
        print(f"active in {registry.registry_path}: {active}")
    elif args.action == "activate":
        evaluation_commands.activate(args, registry, args.model_id, args.version)
        print("  the model_registry_sensor records the new data version within 30 s;")
        print("  then: farm-platform models stale")
    elif args.action == "list":
        from farm_platform.ml.evaluation_records import version_notes

        rows = model_admin.list_models(registry)
        for row in rows:
            mark = "*" if row.active else " "
            print(
                f"{mark} {row.model_id:<18} {row.version:<8} sha256 {row.sha256[:12]}  "
                f"{row.created_at}  {row.summary}"
            )
            if row.problem:
                which = "ACTIVE model" if row.active else "model"
                print(f"    WARNING: {which} unusable: {row.problem}")
            else:
                for note in version_notes(registry, row.model_id, row.version):
                    print(f"    {note}")
        print("(* = active)")
        # Exit 1 when a live model is broken, so scripts and CI notice, not only readers.
        if any(row.active and row.problem for row in rows):
            return 1
    elif args.action == "serve":
        return _models_serve(args, registry)
    elif args.action == "reload":
        from farm_platform.ml.oip import OipClient

        url = args.url or config_values.oip_url(config.value(config.FARM_OIP_URL))
        client = OipClient(url, token=config.value(config.FARM_OIP_TOKEN))
        for model_id, card in sorted(registry.active_cards().items()):
            if card.external is None:  # an external_oip card's model is on its own server
                client.reload(model_id)
                print(
                    f"{client.url}: {model_id} reloaded (registry's active version: {card.version})"
                )
    else:
        return _models_stale(args)
    return 0


def _models_serve(args: argparse.Namespace, registry: Any) -> int:
    try:
        from farm_platform.ml import serving
        from farm_platform.ml.serving_kserve import grpc_address
        from farm_platform.ml.serving_plain import PlainSpec
    except ImportError as exc:
        raise ConfigError(
            f"`models serve` needs the serve extra ({exc}): pip install -e '.[serve]'"
        ) from None
    from farm_platform.resources.environment import environment_fields
    from farm_platform.resources.inference import InferenceResource

    # The server's device, dtype and threads (FARM_TORCH_*) and token; it runs the models
    # itself, whatever FARM_INFERENCE says for the runs that share its environment.
    fields = environment_fields(InferenceResource, env_vars=False)
    settings = InferenceResource(**{**fields, "mode": "local"}).settings()
    # Fail here, in one line, on a missing or corrupted weights file, not in kserve's log.
    for model_id, version in sorted(registry.active_versions().items()):
        registry.verify_weights(registry.card(model_id, version))
    print(
        f"serving {', '.join(sorted(registry.active_versions()))} from {registry.models_dir}: "
        f"REST http://{grpc_address(args.host, args.port)}/v2, "
        f"gRPC {grpc_address(args.host, args.grpc_port)}"
        + (f" (bearer token from ${config.FARM_OIP_TOKEN})" if settings.oip_token else ""),
        flush=True,
    )
    serving.serve(
        registry,
        http_port=args.port,
        grpc_port=args.grpc_port,
        watch_seconds=args.watch_seconds,
        host=args.host,
        token=settings.oip_token,
        emulated_batch_seconds=args.emulate_batch_ms / 1000,
        plain=[PlainSpec.parse(text) for text in args.plain],
        settings=settings,
    )
    return 0


def _models_stale(args: argparse.Namespace) -> int:
    from dagster import AssetKey

    from farm_platform.admin.model_versions import stale_partitions

    assets = [AssetKey(name) for name in args.asset] if args.asset else None
    with open_instance() as instance:
        try:
            stale = stale_partitions(instance, assets)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key, partitions in sorted(stale.items()):
        print(f"{key.to_user_string()}: {len(partitions)} stale partition(s)")
        for partition in partitions[: args.limit]:
            print(f"  {partition.partition_key}  {'; '.join(partition.causes)}")
        if len(partitions) > args.limit:
            print(f"  ... {len(partitions) - args.limit} more")
    return 0
