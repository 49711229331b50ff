"""Shared fixtures: isolated settings under a temp work dir, and small generated data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlref.settings import DataSettings, Settings, get_settings

# One OpenMP thread for torch in the test processes and every process they start (kfp
# tasks, servers, CLI calls): the suite runs several test workers on few cores, where each
# torch op's second thread only spin-waits for a core (a small training burnt ~3x the CPU of
# one thread). A value given in the environment is kept. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose every path lives under this test's temp dir, with small data."""
    monkeypatch.chdir(tmp_path)
    return Settings(
        work_dir=tmp_path / ".mlref",
        data=DataSettings(days=3, rows_per_day=2_000, n_users=300, n_ads=60, n_advertisers=12),
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1; yields the URL of an empty database.

    PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` system user
    (created by Debian's package) in a /tmp directory that user owns; /tmp also keeps the
    socket path under the kernel's length limit.
    """
    import glob
    import os
    import pwd
    import shutil
    import signal
    import subprocess
    import tempfile

    import psycopg2

    from tests.servers import find_binary, require, serve

    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = find_binary("initdb", "postgresql", bin_dirs)
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        accounts = {entry.pw_name: entry for entry in pwd.getpwall()}
        require("postgres" in accounts, "no `postgres` user: `apt-get install postgresql`")
        owner = accounts["postgres"]
        as_user = [find_binary("runuser", "util-linux"), "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="mlref-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    init = subprocess.run(
        [
            *as_user,
            initdb,
            *("-D", str(data), "-U", "mlref", "--auth=trust", "--no-sync"),
            *("--locale=C", "--encoding=UTF8"),
        ],
        cwd=base,
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")

    def connect(port: int, dbname: str):
        return psycopg2.connect(host="127.0.0.1", port=port, user="mlref", dbname=dbname)

    def accepts_connections(port: int) -> bool:
        try:
            connect(port, "postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    server = None
    try:
        server = serve(
            lambda port: [
                *as_user,
                str(Path(initdb).with_name("postgres")),
                *("-D", str(data), "-k", str(base), "-p", str(port), "-h", "127.0.0.1"),
                *("-c", "fsync=off", "-c", "full_page_writes=off"),
            ],
            lambda _: base / "postgres.log",
            ready=accepts_connections,
        )
        port = server.port
        admin = connect(port, "postgres")
        admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
        admin.cursor().execute("CREATE DATABASE mlref")
        admin.close()
        yield f"postgresql://mlref@127.0.0.1:{port}/mlref"
    finally:
        # Fast shutdown (SIGINT) to the postmaster's own PID: a smart shutdown (SIGTERM) would
        # wait for every pooled client connection to close, and runuser is only its parent.
        pid_file = data / "postmaster.pid"
        if pid_file.is_file():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            if server is not None:
                server.process.wait(timeout=30)
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 without persistence; yields its ``host:port``."""
    import redis

    from tests.servers import find_binary, real_clock_env, serve

    binary = find_binary("redis-server", "redis-server")
    base = tmp_path_factory.mktemp("redis")

    def answers(port: int) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=port).ping())
        except redis.ConnectionError:
            return False

    server = serve(
        lambda port: [
            *(binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base)),
            *("--save", "", "--appendonly", "no"),
        ],
        lambda _: base / "redis.log",
        env=real_clock_env(),
        ready=answers,
    )
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads the environment's settings: point them at this test's small world."""
    monkeypatch.setenv("MLREF_WORK_DIR", str(settings.work_dir))
    for key, value in settings.data.model_dump().items():
        monkeypatch.setenv(f"MLREF_DATA__{key.upper()}", str(value))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible endpoint on 127.0.0.1 and the credentials every client is given."""

    endpoint: str
    access_key: str = "mlref-test"
    secret_key: str = "mlref-test-secret"
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        """What a pod gets from the object-store Secret: boto3, s3fs, pyarrow and MLflow read
        these names (``AWS_ENDPOINT_URL`` since botocore 1.31, ``MLFLOW_S3_ENDPOINT_URL``)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self, keys: dict[str, str] | None = None):
        """A boto3 client of this server: the root user's, or ``keys``' (a Secret's
        ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"] if keys else self.access_key,
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"] if keys else self.secret_key,
            region_name=self.region,
        )

    def add_user(
        self, name: str, access_key: str, secret_key: str, actions: list[str] | None = None
    ) -> None:
        """Let ``access_key``/``secret_key`` in with ``actions`` (SeaweedFS grants, as in its
        ``s3.json``; None: all, as a store's root user), as SeaweedFS's config adds a user."""
        import requests

        body = {"name": name, "access_key": access_key, "secret_key": secret_key}
        response = requests.post(f"{self.endpoint}/mlref/users", json={**body, "actions": actions})
        response.raise_for_status()

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (empty, or emptied if a test left objects in it); returns s3://name."""
        client = self.client()
        # In us-east-1 S3 answers 200 to creating a bucket one already owns, so an existing
        # bucket is emptied whatever the create said.
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 REST endpoint on 127.0.0.1: moto's server mode, checking credentials
    (``tests/s3_store.py``).

    moto is pure Python from PyPI (SeaweedFS is on neither PyPI nor Debian), so CI and a
    user's machine get it with the dev extras; boto3, s3fs, pyarrow, Feast, MLflow and KServe's
    storage initializer all talk to it over HTTP exactly as they talk to SeaweedFS or AWS.
    """
    import importlib.util
    import sys

    from tests.servers import require, serve

    require(
        importlib.util.find_spec("moto") is not None,
        "moto is not installed: `pip install 'moto[server]'` (in the dev extras)",
    )
    base = tmp_path_factory.mktemp("s3")
    launcher = Path(__file__).parent / "s3_store.py"  # credentials checked, as in a real store
    keys = S3Server(endpoint="")
    server = serve(
        lambda port: [
            *(sys.executable, str(launcher), "127.0.0.1", str(port)),
            *(keys.access_key, keys.secret_key),
        ],
        lambda _: base / "moto.log",
        timeout=60,
    )
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process's S3 clients point at the test server, as the Secret's env does in a pod."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus Pushgateway on 127.0.0.1; yields its URL."""
    from tests.servers import find_binary, serve

    binary = find_binary("prometheus-pushgateway", "prometheus-pushgateway")
    base = tmp_path_factory.mktemp("pushgateway")

    server = serve(
        lambda port: [binary, f"--web.listen-address=127.0.0.1:{port}"],
        lambda _: base / "pushgateway.log",
    )
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


SPARK_FAULTS = Path(__file__).parent / "spark_faults"


@pytest.fixture(scope="session")
def spark_faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder whose marker files turn on the faults of ``tests/spark_faults`` in the
    Spark session's Python workers (see its sitecustomize.py)."""
    return tmp_path_factory.mktemp("spark-faults")


@pytest.fixture(scope="session")
def spark(spark_faults: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """The one Spark session of the test run, kept small: two cores, a failed task tried
    once more (local[2,2]), two shuffle partitions, no UI. Its Python workers get the S3
    server's env, as executors get the object-store Secret's in a cluster."""
    from mlref.spark import JAVA_HINT, java_available
    from tests.servers import require

    try:
        import pyspark  # noqa: F401
    except ImportError:
        require(False, "pyspark is not installed: `pip install -c constraints.txt pyspark`")
    require(java_available(), f"Java not found: {JAVA_HINT}")
    s3_server: S3Server = request.getfixturevalue("s3_server")  # only once Spark can start
    from mlref.settings import EngineSettings
    from mlref.spark import session

    engine = EngineSettings(data="spark", spark_master="local[2,2]")
    spark = session(
        Settings(engine=engine),
        **{
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "1g",
            # The JIT's first tier only: the tests' jobs are tiny and many, and the optimizing
            # compiler's threads cost more CPU than they save (docs/spark.md, "Overheads").
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
            "spark.executorEnv.PYTHONPATH": str(SPARK_FAULTS),
            "spark.executorEnv.MLREF_TEST_SPARK_FAULTS": str(spark_faults),
            **{f"spark.executorEnv.{key}": value for key, value in s3_server.env.items()},
        },
    )
    yield spark
    spark.stop()


def newest_job(spark: object) -> int:
    """The id of the Spark session's latest job (-1 before any). Ids grow, while the driver
    keeps the status of its recent jobs only, so a count of them stops growing."""
    return max(spark.sparkContext.statusTracker().getJobIdsForGroup(), default=-1)


@pytest.fixture
def applied(settings: Settings) -> Settings:
    """The hand-built log of tests.features computed into snapshot tables and registered
    with Feast."""
    from mlref.features import store
    from mlref.features.compute import compute_tables
    from tests.features import LOG, events, write_curated

    write_curated(settings.curated_dir, events(LOG))
    compute_tables(settings)
    store.apply(settings)
    return settings
