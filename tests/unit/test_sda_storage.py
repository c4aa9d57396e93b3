"""The storage interface, run against both implementations: local (SQLite + files) and aws (moto)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sda.errors import FileMissing, InvalidFileName, JobExists, JobNotFound, StatusConflict
from sda.jobs import new_job, new_job_id
from sda.storage import Storage
from sda.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[2]


def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(params=["local", "aws"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "data")
        return
    from moto import mock_aws

    from sda.storage.aws import AwsStorage

    _aws_env(monkeypatch)
    with mock_aws():
        aws = AwsStorage("security-assistant-jobs-test", "security-assistant-files-test")
        aws.create_resources()
        yield aws


def _job(
    client: str = "St Mary's Hospital", project: str = "Emergency Wing", job_id: str | None = None
) -> dict:
    return new_job(job_id or new_job_id(), client, project, correlation_id="c-1")


def test_create_get_update_put(storage: Storage) -> None:
    job = _job()
    storage.create_job(job)
    assert storage.get_job(job["job_id"]) == job
    assert storage.get_job("job_00000000000000000_none") is None
    with pytest.raises(JobExists):
        storage.create_job(dict(job))

    updated = storage.update_job(
        job["job_id"],
        {
            "status": "processing",
            "current_stage": "pdf_processing",
            "summary": {"confidence": 0.97, "doors": 15},
        },
    )
    assert updated["status"] == "processing" and updated["summary"] == {"confidence": 0.97, "doors": 15}
    assert updated["updated_at"] >= job["updated_at"]
    assert storage.get_job(job["job_id"]) == updated
    with pytest.raises(StatusConflict):
        storage.update_job(job["job_id"], {"status": "failed"}, only_if_status={"queued"})
    assert storage.get_job(job["job_id"])["status"] == "processing"
    with pytest.raises(JobNotFound):
        storage.update_job("job_00000000000000000_none", {"status": "failed"})

    # wholesale rewrite, as the data-repair runbook does
    repaired = {**updated, "status": "queued", "summary": None, "stages_completed": []}
    storage.put_job(repaired)
    assert storage.get_job(job["job_id"]) == repaired


def test_listing_by_status_client_and_processing_version(storage: Storage) -> None:
    jobs = []
    for i, client in enumerate(["Acme", "Acme", "Globex", "Acme"]):
        job = _job(client, "HQ")
        job["created_at"] = f"2025-01-0{i + 1}T00:00:00.000Z"
        storage.create_job(job)
        jobs.append(job)
    storage.update_job(
        jobs[1]["job_id"], {"status": "completed", "processed_by": {"version": "4", "at": "x"}}
    )
    storage.update_job(jobs[2]["job_id"], {"status": "completed", "processed_by": {"version": 4, "at": "y"}})
    storage.update_job(jobs[3]["job_id"], {"status": "failed", "processed_by": {"version": "5", "at": "z"}})

    assert [j["job_id"] for j in storage.list_jobs()] == [j["job_id"] for j in reversed(jobs)]
    assert [j["job_id"] for j in storage.list_jobs(status="completed")] == [
        jobs[2]["job_id"],
        jobs[1]["job_id"],
    ]
    assert [j["job_id"] for j in storage.list_jobs(client_name="Acme")] == [
        jobs[3]["job_id"],
        jobs[1]["job_id"],
        jobs[0]["job_id"],
    ]
    assert [j["job_id"] for j in storage.list_jobs(status="completed", client_name="Acme")] == [
        jobs[1]["job_id"]
    ]
    assert [j["job_id"] for j in storage.list_jobs(limit=2)] == [jobs[3]["job_id"], jobs[2]["job_id"]]
    assert {j["job_id"] for j in storage.jobs_processed_by(4)} == {jobs[1]["job_id"], jobs[2]["job_id"]}
    assert [j["job_id"] for j in storage.jobs_processed_by("5")] == [jobs[3]["job_id"]]
    assert storage.jobs_processed_by("6") == []


def test_files_stay_inside_the_job_folder(storage: Storage) -> None:
    job = _job("../../etc", "../passwd")
    storage.create_job(job)
    key = storage.put_file(job, "drawing.pdf", b"%PDF-1.4 x", "application/pdf")
    assert key == f"etc/passwd/{job['job_id']}/drawing.pdf"
    storage.put_file(job, "checkpoints/pdf_processing.json", b"{}")
    assert storage.get_file(job, "drawing.pdf") == b"%PDF-1.4 x"
    assert storage.has_file(job, "checkpoints/pdf_processing.json")
    assert not storage.has_file(job, "schedule.xlsx")
    with pytest.raises(FileMissing):
        storage.get_file(job, "schedule.xlsx")
    for bad in ("../x.pdf", "/etc/passwd", "a/../../b", "a\\..\\b", "", ".hidden", "a//b", "a/b/c/d", "x/.."):
        with pytest.raises(InvalidFileName):
            storage.put_file(job, bad, b"no")
    # overwrite is whole-file (idempotent stages rewrite their outputs)
    storage.put_file(job, "drawing.pdf", b"%PDF-1.4 y")
    assert storage.get_file(job, "drawing.pdf") == b"%PDF-1.4 y"


def test_health_checks_pass(storage: Storage) -> None:
    checks = {c.name: c for c in storage.check()}
    assert set(checks) == {"table", "storage"}
    assert all(c.ok and c.latency_ms >= 0 for c in checks.values()), checks


def test_local_health_names_an_unusable_data_dir(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    checks = {c.name: c for c in LocalStorage(not_a_dir).check()}
    assert not checks["table"].ok and not checks["storage"].ok
    assert str(not_a_dir) in checks["storage"].detail


def test_local_table_is_wal_and_records_are_json(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "data")
    job = _job()
    store.create_job(job)
    conn = sqlite3.connect(tmp_path / "data" / "jobs.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = conn.execute("SELECT company_client_job, status FROM jobs").fetchone()
    finally:
        conn.close()
    assert row == (f"7central#st_mary_s_hospital#{job['job_id']}", "queued")


def test_local_ids_are_unique_across_processes(tmp_path: Path) -> None:
    """Two processes insert the same id at the same moment: exactly one wins."""
    data = tmp_path / "data"
    LocalStorage(data).check()
    job_id = new_job_id()
    start = time.time() + 1.0
    code = (
        "import sys, time; from pathlib import Path\n"
        "from sda.jobs import new_job; from sda.storage.local import LocalStorage\n"
        "from sda.errors import JobExists\n"
        f"s = LocalStorage(Path({str(data)!r})); time.sleep(max(0, {start} - time.time()))\n"
        f"try:\n    s.create_job(new_job({job_id!r}, 'c', 'p')); print('won')\n"
        "except JobExists:\n    print('lost')\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(3)
    ]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["lost", "lost", "won"]
    assert len(LocalStorage(data).list_jobs()) == 1


def test_aws_items_use_the_original_key_design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    from sda.storage.aws import INDEXES, PK, AwsStorage

    _aws_env(monkeypatch)
    with mock_aws():
        store = AwsStorage("jobs", "files")
        store.create_resources()
        job = _job("Acme Corp", "Tower")
        store.create_job(job)
        table = boto3.client("dynamodb").describe_table(TableName="jobs")["Table"]
        assert table["KeySchema"] == [{"AttributeName": PK, "KeyType": "HASH"}]
        assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == set(INDEXES)
        item = (
            boto3.resource("dynamodb")
            .Table("jobs")
            .get_item(Key={PK: f"7central#acme_corp#{job['job_id']}"})["Item"]
        )
        assert item["job_id"] == job["job_id"] and item["status"] == "queued"
        store.put_file(job, "drawing.pdf", b"%PDF-")
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="files")["Contents"]]
        assert keys == [f"acme_corp/tower/{job['job_id']}/drawing.pdf"]
        # a second process (a fresh instance, no cache) resolves the id through the pointer item
        assert AwsStorage("jobs", "files").get_job(job["job_id"]) == job
        # the health check names the table when it is gone
        boto3.client("dynamodb").delete_table(TableName="jobs")
        checks = {c.name: c for c in AwsStorage("jobs", "files").check()}
        assert not checks["table"].ok and checks["storage"].ok


def test_aws_side_copy_reads_each_file_as_of_the_backup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repair's side copy on AWS: the job from the (side) table, each file as the version current
    at `as_of` — S3 keeps LastModified to the second, so within one second the latest one wins."""
    import boto3
    from moto import mock_aws

    from sda.storage.aws import AwsSideCopy, AwsStorage
    from sda.storage.base import job_prefix

    _aws_env(monkeypatch)
    with mock_aws():
        store = AwsStorage("jobs", "files")
        store.create_resources()
        s3 = boto3.client("s3")
        s3.put_bucket_versioning(Bucket="files", VersioningConfiguration={"Status": "Enabled"})
        job = _job()
        store.create_job(job)
        before = time.time() - 1  # a second before any of the job's files
        store.put_file(job, "schedule.xlsx", b"first")
        store.put_file(job, "schedule.xlsx", b"second")
        store.put_file(job, "checkpoints/analysis.json", b"{}")
        s3.delete_object(Bucket="files", Key=f"{job_prefix(job)}/checkpoints/analysis.json")
        side = AwsSideCopy("jobs", "files", as_of=time.time() + 1)  # the live table stands in for a side one
        assert side.get_job(job["job_id"]) == job and side.list_jobs() == [job]
        assert side.job_files(job) == {"schedule.xlsx": b"second"}
        assert AwsSideCopy("jobs", "files", as_of=before).job_files(job) == {}


def test_a_snapshot_taken_before_any_data_is_an_empty_side_copy(tmp_path: Path) -> None:
    """The local platform's backup of an environment that never wrote data has no data dir: the repair
    reads it as empty (every job the bad version touched is then re-queued), a wrong path stays an error."""
    from sda.errors import StorageUnavailable
    from sda.storage.local import LocalSideCopy

    (tmp_path / "snap").mkdir()
    side = LocalSideCopy(tmp_path / "snap" / "data")
    assert side.list_jobs() == [] and side.get_job("job_1") is None
    assert side.job_files({"job_id": "job_20250101000000000_abcd", "client_slug": "acme", "project_slug": "p"}) == {}
    with pytest.raises(StorageUnavailable):
        LocalSideCopy(tmp_path / "nowhere" / "data")


def test_an_aws_instance_remembers_a_bounded_number_of_job_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm API instance creates and reads job after job: what it remembers (job id → key) stays bounded,
    and a job it has forgotten is still found through its pointer item."""
    from moto import mock_aws

    from sda.storage import aws

    _aws_env(monkeypatch)
    monkeypatch.setattr(aws, "PK_CACHE_SIZE", 2)
    with mock_aws():
        store = aws.AwsStorage("jobs", "files")
        store.create_resources()
        jobs = [_job("Acme Corp", f"Tower {i}") for i in range(4)]
        for job in jobs:
            store.create_job(job)
        assert list(store._pk_cache) == [jobs[2]["job_id"], jobs[3]["job_id"]]
        assert store.get_job(jobs[0]["job_id"]) == jobs[0]  # forgotten: read through the pointer
        assert list(store._pk_cache) == [jobs[3]["job_id"], jobs[0]["job_id"]]
