"""The feature store in a bucket: a real S3-compatible server (moto's) on loopback, pyarrow's S3 client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from difffeat_tune._errors import StoreError
from difffeat_tune._paths import store_location
from difffeat_tune.data._base import Dataset
from difffeat_tune.store import ExtractionKey, FeatureStore
from tests.test_cli import project, run_cli  # noqa: F401 - the CLI tests' manifest data set and space

moto_server = pytest.importorskip("moto.server", reason="the object-store tests need moto[server] (test extras)")

#: Any key works with moto; pyarrow reads them from the environment as it would real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server on 127.0.0.1 (a free port), for the whole session."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket; returns the store URI ``s3://<bucket>/features?endpoint_override=...``."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"b-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}/features?endpoint_override={s3_endpoint}&scheme=http"


def _objects(uri: str) -> list[str]:
    fs, inner = store_location(uri, "test").filesystem()  # type: ignore[union-attr]
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
                  if i.type == pafs.FileType.File)


def _key() -> ExtractionKey:
    return ExtractionKey("image", "tiny-dit", "abc123", {"noise_seed": 0}, "float32")


def test_extract_search_and_report_with_the_store_in_a_bucket(project: Path, bucket: str, tmp_path: Path,  # noqa: F811
                                                              capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
              "--features", bucket, "--device", "cpu"]
    code, out, err = run_cli(["extract", *common, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert sum(e["parts_written"] for e in json.loads(out)["extractions"]) == 12
    objects = _objects(bucket)
    assert len([o for o in objects if o.endswith(".parquet") and "/part-" in o]) == 12
    assert len([o for o in objects if "/manifests/" in o]) == 2  # one fragment per extraction's writer
    code, out, err = run_cli(["extract", *common, "--verify", "--json"], capsys, monkeypatch)
    assert code == 0 and all(e["parts_written"] == 0 for e in json.loads(out)["extractions"]), err
    code, out, err = run_cli(["run", "heuristic", *common, "--runs", str(tmp_path / "runs"), "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["best_config"] is not None
    [report] = (tmp_path / "runs" / "reports").glob("*-heuristic/index.html")  # re-trained from the bucket
    assert report.is_file()
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # nothing local named after the URI


def test_a_part_larger_than_one_upload_part_round_trips(bucket: str, toy_dataset: Dataset) -> None:
    """Parts over 5 MiB go up as multipart uploads: a server that answers them wrongly fails here."""
    store = FeatureStore(bucket)
    store.write_dataset(toy_dataset)
    ext = store.extraction(toy_dataset, _key(), width=32768, num_blocks=4)
    ids = toy_dataset.split("val").ids
    rows = np.random.default_rng(0).standard_normal((len(ids), 32768)).astype(np.float32)
    values = {b: rows * (b + 1) for b in (1, 2, 3)}
    ext.write_part(30, "val", 0, ids, values, n_parts=1, provenance={})
    info = store_location(str(ext.part_path(30, "val", 0)), "t").filesystem()  # type: ignore[union-attr]
    assert info[0].get_file_info(info[1]).size > 5 << 20  # over one upload part
    got = FeatureStore(bucket).view("toy").load("image", 30, 3, "val")
    torch.testing.assert_close(got.values, torch.from_numpy(values[3]))


def test_a_part_whose_upload_was_interrupted_is_not_visible_and_is_redone(bucket: str, toy_dataset: Dataset,
                                                                          tmp_path: Path) -> None:
    store = FeatureStore(bucket)
    ext = store.extraction(toy_dataset, _key(), width=4, num_blocks=28)
    ids = toy_dataset.split("val").ids
    values = {8: np.ones((len(ids), 4), np.float32)}
    ext.write_part(10, "val", 0, ids, values, n_parts=1, provenance={})
    target = str(ext.part_path(30, "val", 0))
    # A writer that dies in the middle of the part's (multipart) upload, as a killed worker would.
    script = (
        "import os, sys; from difffeat_tune._paths import store_location\n"
        f"fs, inner = store_location({target!r}, 't').filesystem()\n"
        "out = fs.open_output_stream(inner)\n"
        "out.write(b'x' * (12 << 20)); out.flush()\n"
        "os._exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 3, done.stderr
    assert not any(o.endswith("t0030/val/part-00000.parquet") for o in _objects(bucket))
    reopened = FeatureStore(bucket).extraction(toy_dataset, _key())
    assert reopened.available("val") == {10: {8}} and reopened.part_blocks(30, "val", 0) == set()
    reopened.write_part(30, "val", 0, ids, values, n_parts=1, provenance={})
    assert FeatureStore(bucket).extraction(toy_dataset, _key()).available("val") == {10: {8}, 30: {8}}


def test_two_writers_of_one_extraction_keep_each_others_entries(bucket: str, toy_dataset: Dataset) -> None:
    first = FeatureStore(bucket).extraction(toy_dataset, _key(), width=4, num_blocks=28)
    second = FeatureStore(bucket).extraction(toy_dataset, _key())
    ids = toy_dataset.split("val").ids
    first.write_part(10, "val", 0, ids, {8: np.ones((len(ids), 4), np.float32)}, n_parts=1, provenance={})
    second.write_part(30, "val", 0, ids, {8: np.zeros((len(ids), 4), np.float32)}, n_parts=1, provenance={})
    first.write_part(50, "val", 0, ids, {8: np.ones((len(ids), 4), np.float32)}, n_parts=1, provenance={})
    assert FeatureStore(bucket).extraction(toy_dataset, _key()).available("val") == {10: {8}, 30: {8}, 50: {8}}


def test_a_damaged_object_is_found_by_its_checksum(bucket: str, toy_dataset: Dataset) -> None:
    store = FeatureStore(bucket)
    ext = store.extraction(toy_dataset, _key(), width=4, num_blocks=28)
    ids = toy_dataset.split("val").ids
    ext.write_part(10, "val", 0, ids, {8: np.ones((len(ids), 4), np.float32)}, n_parts=1, provenance={})
    fs, inner = ext.part_path(10, "val", 0).filesystem()  # type: ignore[union-attr]
    data = bytearray(fs.open_input_stream(inner).read())
    data[len(data) // 2] ^= 0xFF
    with fs.open_output_stream(inner) as out:
        out.write(bytes(data))
    [(path, why)] = FeatureStore(bucket).extraction(toy_dataset, _key()).verify()
    assert why.startswith("checksum mismatch") and str(path).endswith("t0010/val/part-00000.parquet?" +
                                                                      bucket.split("?")[1])


def test_a_missing_bucket_is_one_error_naming_the_uri(bucket: str) -> None:
    missing = bucket.replace("s3://b-", "s3://nobucket-")
    with pytest.raises(StoreError, match=r"feature store s3://nobucket-.*: bucket 'nobucket-\w+' does not exist"):
        FeatureStore(missing)


def test_a_wrong_endpoint_is_one_error_with_the_secret_masked(bucket: str, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    wrong = "s3://AKIDEXAMPLE:very-secret@somebucket/features?endpoint_override=127.0.0.1:9&scheme=http"
    with pytest.raises(StoreError) as caught:
        FeatureStore(wrong)
    message = str(caught.value)
    assert "very-secret" not in message and "s3://AKIDEXAMPLE:***@somebucket/features" in message
    assert "object store failed" in message
    code, out, err = run_cli(["extract", "--features", wrong, "--device", "cpu"], capsys, monkeypatch)
    assert code != 0 and "very-secret" not in out + err and "***@somebucket" in " ".join(err.split())


def test_a_ray_extraction_and_a_ray_search_use_the_bucket(project: Path, bucket: str, tmp_path: Path,  # noqa: F811
                                                          capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Actors write the parts and the Ray trials read them from the bucket; the driver alone writes manifests."""
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", str(project / "metadata.jsonl"), "--space", str(project / "space.toml"),
              "--features", bucket, "--device", "cpu"]
    code, out, err = run_cli(["extract", *common, "--engine", "ray", "--actors", "2", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert sum(e["parts_written"] for e in json.loads(out)["extractions"]) == 12
    assert len([o for o in _objects(bucket) if "/manifests/" in o]) == 2  # the driver's, one per extraction
    code, out, err = run_cli(["run", "heuristic", *common, "--engine", "ray", "--runs", str(tmp_path / "runs"),
                              "--no-report", "--json"], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["best_config"] is not None and summary["trials"].get("complete", 0) > 0
