"""The CLI on a ledger whose blobs live in S3: --blobs / ARTIFACT_LEDGER_BLOBS, --cache-dir, and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import boto3

from artifact_ledger.facade import open_ledger


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "artifact_ledger", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def _ledger(tmp_path: Path, url: str) -> tuple[Path, str, str]:
    root = tmp_path / "L"
    f = tmp_path / "weights.bin"
    f.write_bytes(b"w" * 5000)

    async def main():
        async with open_ledger(root, blobs=url, cache_dir=tmp_path / "c") as led:
            art = await led.artifacts(run_id="r", graph_id="g", node_id="n").save(str(f), kind="model")
            return art.artifact_id, art.sha256

    aid, sha = anyio.run(main)
    return root, aid, sha


def test_cli_reads_verifies_and_exports_s3_blobs(s3_env, s3_place, tmp_path):
    bucket, prefix = s3_place
    url = f"s3://{bucket}/{prefix}"
    root, aid, sha = _ledger(tmp_path, url)
    env = {**os.environ}
    # The ledger remembers its place: no --blobs needed to read it.
    res = cli("-C", str(root), "--json", "verify", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True
    out = tmp_path / "export"
    res = cli("-C", str(root), "--cache-dir", str(tmp_path / "cli-cache"), "export-files", "--run", "r", str(out),
              env=env)
    assert res.returncode == 0, res.stderr
    assert (out / "weights.bin").read_bytes() == b"w" * 5000
    assert any((tmp_path / "cli-cache").rglob(sha))  # fetched through the cache it was given
    # Given explicitly, by flag and by environment variable, it must agree with the ledger's record.
    res = cli("-C", str(root), "--blobs", url, "--cache-dir", str(tmp_path / "cli-cache"), "--json", "verify", env=env)
    assert res.returncode == 0, res.stderr
    res = cli("-C", str(root), "--json", "verify", env={**env, "ARTIFACT_LEDGER_BLOBS": f"s3://{bucket}/elsewhere"})
    assert res.returncode != 0 and f"keeps its blobs in {url}" in res.stderr
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"{prefix}/sha256/{sha[:2]}/{sha}")
    res = cli("-C", str(root), "--json", "verify", env=env)
    assert res.returncode == 1 and "is missing from the store" in res.stdout


def test_cli_names_a_missing_bucket_and_refused_credentials(s3_env, s3_place, tmp_path):
    bucket, prefix = s3_place
    root, _, _ = _ledger(tmp_path, f"s3://{bucket}/{prefix}")
    (root / "blobs" / "remote").write_text("s3://no-such-bucket-cli/p\n")
    res = cli("-C", str(root), "verify", env={**os.environ})
    assert res.returncode != 0 and "the bucket 'no-such-bucket-cli' does not exist" in res.stderr
    assert "no ledger at" not in res.stderr
    (root / "blobs" / "remote").write_text(f"s3://{bucket}/{prefix}\n")
    res = cli("-C", str(root), "verify", env={**os.environ, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert res.returncode != 0 and "refused the credentials" in res.stderr
