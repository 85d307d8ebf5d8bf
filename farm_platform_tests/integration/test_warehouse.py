"""The warehouse on real DuckDB and real PostgreSQL: schema, keys, idempotent writes."""

import datetime as dt

import polars as pl
import pytest

from farm_platform.resources.tables import (
    DISEASE_GRADES_COLUMNS,
    DISEASE_GRADES_TABLE,
    LEAF_CROPS_COLUMNS,
)
from farm_platform.resources.warehouse import WarehouseError, WarehouseResource

GRADED_AT = dt.datetime(2026, 6, 2, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request, tmp_path):
    if request.param == "duckdb":
        resource = WarehouseResource(url=f"duckdb:///{tmp_path}/farm.duckdb")
    else:
        resource = WarehouseResource(url=request.getfixturevalue("postgres_url"))
        with resource.connect() as connection:
            for table in ("disease_grades", "leaf_crops", "drone_images"):
                connection.execute(f"DROP TABLE IF EXISTS {table}")
    resource.create_schema()
    return resource


def grades(position="P000", date=dt.date(2026, 6, 1), leaves=3, version="v1", grade=1):
    return pl.DataFrame(
        {
            "position_id": [position] * leaves,
            "date": [date] * leaves,
            "leaf_crop_idx": list(range(leaves)),
            "disease_type": ["disease_3"] * leaves,
            "predicted_grade": [grade] * leaves,
            "cropper_model_id": ["leaf_detector"] * leaves,
            "cropper_model_version": ["v1"] * leaves,
            "disease_model_id": ["disease_3_grader"] * leaves,
            "disease_model_version": [version] * leaves,
            "confidence": [0.9] * leaves,
            "graded_at": [GRADED_AT] * leaves,
            "dagster_run_id": ["run-1"] * leaves,
        }
    )


def count(warehouse, where="TRUE"):
    return warehouse.query(f"SELECT count(*) AS n FROM disease_grades WHERE {where}")["n"][0]


def test_tables_have_the_contract_columns(warehouse):
    for table, columns in (
        ("disease_grades", DISEASE_GRADES_COLUMNS),
        ("leaf_crops", LEAF_CROPS_COLUMNS),
    ):
        found = warehouse.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            [table],
        )["column_name"].to_list()
        assert sorted(found) == sorted(columns)


def test_rewriting_a_partition_with_the_same_models_replaces_its_rows(warehouse):
    warehouse.replace_rows("disease_grades", grades(leaves=3, grade=1))
    warehouse.replace_rows("disease_grades", grades(leaves=2, grade=2))
    assert count(warehouse) == 2
    assert count(warehouse, "predicted_grade = 2") == 2


def test_a_new_model_version_adds_rows_beside_the_old(warehouse):
    warehouse.replace_rows("disease_grades", grades(version="v1"))
    warehouse.replace_rows("disease_grades", grades(version="v2"))
    assert count(warehouse, "disease_model_version = 'v1'") == 3
    assert count(warehouse, "disease_model_version = 'v2'") == 3


def test_other_partitions_are_untouched(warehouse):
    warehouse.replace_rows("disease_grades", grades(position="P000"))
    warehouse.replace_rows("disease_grades", grades(position="P001", leaves=1))
    assert count(warehouse, "position_id = 'P000'") == 3


def test_scopes_clear_a_partition_that_has_no_rows_any_more(warehouse):
    warehouse.replace_rows("disease_grades", grades())
    empty = grades().head(0)
    scopes = grades().head(1).select(DISEASE_GRADES_TABLE.replace_scope)
    warehouse.replace_rows("disease_grades", empty, scopes=scopes)
    assert count(warehouse) == 0


def test_writes_of_one_table_in_one_call_each_replace_their_own_scope(warehouse):
    """A run's chunk hands `replace_many` one grades write per disease (they become one
    DELETE and one INSERT): each write's rows replace its scope, none removes another's."""
    warehouse.replace_many(
        [
            ("disease_grades", grades(position="P000", grade=1), None),
            ("disease_grades", grades(position="P001", grade=1), None),
            ("disease_grades", grades(position="P002", grade=1), None),
        ]
    )
    gone = grades(position="P001").head(1).select(DISEASE_GRADES_TABLE.replace_scope)
    warehouse.replace_many(
        [
            ("disease_grades", grades(position="P000", leaves=2, grade=2), None),
            ("disease_grades", grades(position="P001").head(0), gone),
            ("disease_grades", grades(position="P003", leaves=1, grade=3), None),
        ]
    )
    rows = warehouse.query(
        "SELECT position_id, predicted_grade, count(*) AS n FROM disease_grades"
        " GROUP BY 1, 2 ORDER BY 1"
    ).rows()
    assert rows == [("P000", 2, 2), ("P002", 1, 3), ("P003", 3, 1)]


def test_primary_key_rejects_duplicate_rows(warehouse):
    duplicated = pl.concat([grades(leaves=1), grades(leaves=1)])
    with pytest.raises(Exception, match="(?i)duplicate|primary key|unique"):
        warehouse.replace_rows("disease_grades", duplicated)
    assert count(warehouse) == 0  # the failed write left nothing behind


def test_a_commit_that_fails_on_a_full_disk_reports_the_full_disk(tmp_path):
    """A DuckDB warehouse on a real 1 MiB tmpfs: the write's commit cannot write its WAL.
    The error is the commit's own (no space left), not the failed ROLLBACK's after it."""
    import subprocess

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (needs root): {mounted.stderr!r}")
    try:
        warehouse = WarehouseResource(url=f"duckdb:///{disk / 'farm.duckdb'}")
        warehouse.create_schema()
        leaves = 20_000  # about 3 MB of rows: more than the disk has left
        with pytest.raises(Exception) as failed:
            warehouse.replace_rows("disease_grades", grades(leaves=leaves))
        assert "No space left on device" in str(failed.value), failed.value
        assert "rollback" not in str(failed.value).lower(), failed.value
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_commit_that_postgresql_refuses_reports_its_own_cause(postgres_url):
    """A unique constraint checked at COMMIT (deferred) refuses the transaction there:
    the error raised is PostgreSQL's refusal, naming the constraint."""
    warehouse = WarehouseResource(url=postgres_url)
    table = "deferred_commit_check"
    with warehouse.connect() as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}")
        connection.execute(
            f"CREATE TABLE {table} (k INTEGER, UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        insert = (f"INSERT INTO {table} VALUES (%s)", [1])
        with pytest.raises(Exception, match=f"{table}_k_key") as failed:
            warehouse.execute([insert, insert])  # accepted; refused at COMMIT
        assert type(failed.value).__name__ == "UniqueViolation"
        assert warehouse.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    finally:
        with warehouse.connect() as connection:
            connection.execute(f"DROP TABLE {table}")


def test_missing_columns_are_named(warehouse):
    with pytest.raises(WarehouseError, match="confidence"):
        warehouse.replace_rows("disease_grades", grades().drop("confidence"))


def test_unsupported_url_says_what_is_supported():
    with pytest.raises(WarehouseError, match="duckdb:///"):
        WarehouseResource(url="mysql://farm@localhost/farm").create_schema()
