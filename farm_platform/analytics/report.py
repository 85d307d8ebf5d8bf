"""`effectiveness_report`: the day's HTML page (farm_platform/report/render.py) and the mart
tables as CSV and Parquet, under `{reports root}/{date}/`."""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    asset,
)

from farm_platform.layout import bucket_filesystem, join, parse_date
from farm_platform.report.data import effect_decisions, load_report_data
from farm_platform.report.headline import design_line, summary_lines
from farm_platform.report.pre_period import pre_period_line
from farm_platform.report.render import previous_report, render_report
from farm_platform.resources.model_registry import ModelRegistryResource
from farm_platform.resources.report_store import ReportStoreResource
from farm_platform.resources.warehouse import WarehouseResource

EFFECTIVENESS_REPORT = "effectiveness_report"
REPORT_MARTS = (
    "treatment_effect",
    "trend_adjusted_effect",
    "trial_design",
    "daily_severity",
    "coverage",
    "model_version_agreement",
    "model_version_confusion",
    "model_version_effects",
)


def build_effectiveness_report(days: PartitionsDefinition) -> AssetsDefinition:
    """The `effectiveness_report` asset over the day partitions `days` (the definitions
    build them once when they load, from their `trial_calendar`)."""
    return asset(
        name=EFFECTIVENESS_REPORT,
        partitions_def=days,
        deps=[AssetKey(mart) for mart in REPORT_MARTS],
        group_name="reports",
        kinds={"html"},
        description="Daily HTML report (plots, effect with intervals, coverage, model "
        "versions) plus the marts as CSV and Parquet, under {reports root}/{date}/.",
    )(write_effectiveness_report)


def write_effectiveness_report(
    context: AssetExecutionContext,
    warehouse: WarehouseResource,
    reports: ReportStoreResource,
    models: ModelRegistryResource,
) -> MaterializeResult:
    """The body of `effectiveness_report`: the report of the context's day partition."""
    day = parse_date(context.partition_key)
    fs, root = bucket_filesystem(reports.root)
    previous_day, previous = previous_report(fs, root, day)
    data = load_report_data(
        warehouse, day, models.registry(), previous_effect=previous, previous_day=previous_day
    )
    folder = join(root, day.isoformat())
    fs.makedirs(folder, exist_ok=True)
    report_path = join(folder, "effectiveness_report.html")
    fs.pipe_file(report_path, render_report(data).encode())
    for name, frame in (
        # With the decision columns the report adds (Holm, always-valid rule).
        ("treatment_effect", effect_decisions(data)),
        ("trend_adjusted_effect", data.trend),
        ("daily_severity", data.severity),
        ("coverage", data.coverage),
        ("model_version_agreement", data.agreement),
        ("model_version_confusion", data.confusion),
        ("model_version_effects", data.version_effects),
    ):
        with fs.open(join(folder, f"{name}.parquet"), "wb") as handle:
            frame.write_parquet(handle)
        fs.pipe_file(join(folder, f"{name}.csv"), frame.write_csv().encode())
    lines = [design_line(data), *filter(None, [pre_period_line(data)]), *summary_lines(data)]
    for line in lines:
        context.log.info(line)
    return MaterializeResult(
        metadata={
            "report": MetadataValue.path(
                join(reports.root, day.isoformat(), "effectiveness_report.html")
            ),
            "summary": MetadataValue.md(
                "\n".join(f"- {line}" for line in lines) or "no effect yet"
            ),
            "ungraded_positions": MetadataValue.json(data.ungraded),
            "held_back_partitions": MetadataValue.json(
                [
                    f"{row['date']}|{row['position_id']}|{row['disease_type']}"
                    for row in data.held_back.head(50).iter_rows(named=True)
                ]
            ),
        }
    )
