"""Where the daily effectiveness reports are written (FARM_REPORTS, else under the bucket)."""

from dagster import ConfigurableResource
from pydantic import Field

from farm_platform.layout import join


class ReportStoreResource(ConfigurableResource):
    """Where reports go: `reports_url` if set, else `{bucket_url}/reports`."""

    bucket_url: str = Field(description="FARM_BUCKET")
    reports_url: str = Field(default="", description="FARM_REPORTS, overrides the default")

    @property
    def root(self) -> str:
        return self.reports_url.rstrip("/") or join(self.bucket_url, "reports")
