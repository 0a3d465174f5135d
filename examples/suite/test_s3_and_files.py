"""S3 per worker, files per worker, and a value computed once for the whole run."""

from __future__ import annotations

import hashlib
import os

import boto3

from testenv_harness import TestEnv


def test_the_same_bucket_name_in_every_worker(testenv: TestEnv) -> None:
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="reports")
    s3.put_object(Bucket="reports", Key=f"worker-{testenv.worker}.txt", Body=b"mine")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="reports").get("Contents", [])]
    assert keys == [f"worker-{testenv.worker}.txt"], "nobody else writes to this worker's S3"


def test_files_with_the_same_name_do_not_collide(testenv: TestEnv) -> None:
    path = testenv.tmp_path / "report-3.ztdf"
    path.write_text(f"worker {testenv.worker}")
    assert path.read_text() == f"worker {testenv.worker}"


def test_expensive_value_is_computed_once_per_run(testenv: TestEnv) -> None:
    def compute() -> dict[str, str]:
        return {"digest": hashlib.sha256(b"fixture data").hexdigest(), "by": str(testenv.worker)}

    first = testenv.shared_cache("fixture-digest", compute)
    assert testenv.shared_cache("fixture-digest", compute) == first
    assert first["digest"] == hashlib.sha256(b"fixture data").hexdigest()
