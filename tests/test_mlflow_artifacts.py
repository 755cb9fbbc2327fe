"""Artifact storage (local folder, S3 via moto) and the MLflow artifact proxy of ``cplat serve``."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cplat.ml.tracking.artifacts import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactPathError,
    ArtifactTooLargeError,
    LocalArtifactStore,
    S3ArtifactStore,
    split_path,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- paths ------------------------------------------------------------------------------------

BAD_PATHS = [
    ("", "empty"),
    ("/etc/passwd", "relative"),
    ("../x", "'..'"),
    ("a/../../x", "'..'"),
    ("..", "'..'"),
    ("a/./b", "'.'"),
    ("a//b", "empty component"),
    ("a\\..\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("a\nb", "control"),
    ("a\x7fb", "control"),
    ("x" * 256, "longer than 255"),
    ("/".join(["abcdefghij"] * 100), "bytes long"),
    ("/".join(["a"] * 65), "deeper"),
    ("a/.cplat-upload-1234", "reserved"),
    ("a/\ud800", "Unicode"),
]


@pytest.mark.parametrize(("path", "why"), BAD_PATHS)
def test_split_path_refuses(path: str, why: str) -> None:
    with pytest.raises(ArtifactPathError, match=why) as err:
        split_path(path)
    assert err.value.field == "path"


def test_split_path_accepts() -> None:
    assert split_path("1/abc/artifacts/model.pkl") == ("1", "abc", "artifacts", "model.pkl")
    assert split_path("a/b/") == ("a", "b")
    assert split_path("é/ü .txt") == ("é", "ü .txt")
    assert split_path("x" * 255) == ("x" * 255,)
    assert split_path("", allow_root=True) == ()
    assert split_path("...") == ("...",)  # a name, not a parent reference


# --- the local folder -------------------------------------------------------------------------


@pytest.fixture()
def local(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "data" / "artifacts")


async def agen(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def test_local_round_trip_and_modes(local: LocalArtifactStore) -> None:
    async def go() -> None:
        assert await local.put("1/r/artifacts/a.txt", b"hello") == 5
        assert await local.put("1/r/artifacts/sub/b.bin", agen(b"x" * 10, b"y" * 5)) == 15
        assert await local.put("1/r/artifacts/sub/c", iter([b"ab", b"cd"])) == 4
        assert await local.get_bytes("1/r/artifacts/a.txt") == b"hello"
        async with await local.open("1/r/artifacts/sub/b.bin") as s:
            assert s.size == 15
            assert await s.read_all() == b"x" * 10 + b"y" * 5
        assert await local.list_dir("1/r/artifacts") == [
            ArtifactEntry("a.txt", False, 5),
            ArtifactEntry("sub", True, None),
        ]
        assert [e.name for e in await local.list_dir("1/r/artifacts/sub/")] == ["b.bin", "c"]
        # Replacing a file is allowed and atomic.
        await local.put("1/r/artifacts/a.txt", b"bye")
        assert await local.get_bytes("1/r/artifacts/a.txt") == b"bye"

    run(go())
    root = local.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for p in root.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_local_binary_file_source(local: LocalArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = bytes(range(256)) * 20000  # lines would split this; reads must not
    src.write_bytes(data)
    with open(src, "rb") as fh:
        assert run(local.put("1/f.bin", fh)) == len(data)
    assert run(local.get_bytes("1/f.bin")) == data


def test_local_missing_and_listing_edges(local: LocalArtifactStore) -> None:
    async def go() -> None:
        with pytest.raises(ArtifactNotFoundError):
            await local.open("1/nothing")
        with pytest.raises(ArtifactNotFoundError):
            await local.open("nope/nothing")
        assert await local.list_dir("nope") == []
        await local.put("1/file", b"x")
        assert await local.list_dir("1/file") == []  # a file lists as nothing, as in MLflow
        assert await local.list_dir("") == [ArtifactEntry("1", True, None)]
        with pytest.raises(ArtifactPathError, match="folder, not a file"):
            await local.open("1")

    run(go())


def test_local_file_where_a_folder_is_expected(local: LocalArtifactStore) -> None:
    async def go() -> None:
        await local.put("1/a", b"file")
        with pytest.raises(ArtifactPathError, match="through a file"):
            await local.put("1/a/b", b"x")
        with pytest.raises(ArtifactPathError, match="through a file"):
            await local.open("1/a/b")
        with pytest.raises(ArtifactPathError, match="through a file"):
            await local.list_dir("1/a/b")
        await local.put("1/d/x", b"x")
        with pytest.raises(ArtifactPathError, match="a folder already has this path"):
            await local.put("1/d", b"replaces a folder?")
        assert await local.get_bytes("1/d/x") == b"x"
        assert await local.get_bytes("1/a") == b"file"

    run(go())


def test_local_symlinks_inside_the_root_are_not_followed(
    local: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"do not read")
    # A link to a folder outside, and a link to a file outside, planted inside the root.
    (local.root / "1").symlink_to(outside)
    (local.root / "2").mkdir()
    (local.root / "2" / "f").symlink_to(secret)

    async def go() -> None:
        with pytest.raises(ArtifactPathError, match="symbolic link"):
            await local.open("1/secret")
        with pytest.raises(ArtifactPathError, match="symbolic link"):
            await local.put("1/new", b"escape")
        with pytest.raises(ArtifactPathError, match="symbolic link"):
            await local.list_dir("1")
        with pytest.raises(ArtifactPathError, match="symbolic link"):
            await local.open("2/f")
        # Links are not artifacts: not listed.
        assert await local.list_dir("2") == []
        assert [e.name for e in await local.list_dir("")] == ["2"]
        # An upload over a link replaces the link, never writes through it.
        await local.put("2/f", b"mine")
        assert await local.get_bytes("2/f") == b"mine"
        # Deleting a link removes the link, not what it points to.
        await local.delete("1")

    run(go())
    assert secret.read_bytes() == b"do not read"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (local.root / "1").exists()


def test_local_special_files_refused(local: LocalArtifactStore) -> None:
    (local.root / "1").mkdir()
    os.mkfifo(local.root / "1" / "fifo")
    with pytest.raises(ArtifactPathError, match="other than a file"):
        run(local.open("1/fifo"))  # must not block on the pipe either
    assert run(local.list_dir("1")) == []


def test_local_size_cap_leaves_nothing(local: LocalArtifactStore) -> None:
    async def go() -> None:
        await local.put("1/ok", b"x" * 10, max_size=10)
        with pytest.raises(ArtifactTooLargeError, match="10 bytes") as err:
            await local.put("1/big", agen(b"x" * 6, b"y" * 6), max_size=10)
        assert err.value.limit == 10
        # A failed replacement keeps the old file.
        with pytest.raises(ArtifactTooLargeError):
            await local.put("1/ok", b"z" * 11, max_size=10)
        assert await local.get_bytes("1/ok") == b"x" * 10

    run(go())
    assert sorted(p.name for p in (local.root / "1").iterdir()) == ["ok"]  # no temporary files


def test_local_failed_stream_leaves_nothing(local: LocalArtifactStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        run(local.put("1/x", broken()))
    assert list((local.root / "1").iterdir()) == []


def test_local_delete(local: LocalArtifactStore, tmp_path: Path) -> None:
    async def go() -> None:
        for name in ("1/r/a", "1/r/sub/b", "1/r/sub/deeper/c", "1/keep"):
            await local.put(name, b"x")
        await local.delete("1/r")
        assert await local.list_dir("1") == [ArtifactEntry("keep", False, 1)]
        await local.delete("1/r")  # nothing there: fine
        await local.delete("1/keep")
        assert await local.list_dir("1") == []
        with pytest.raises(ArtifactPathError):
            await local.delete("../1")

    run(go())


def test_local_root_tightened(tmp_path: Path) -> None:
    root = tmp_path / "loose"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    LocalArtifactStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_local_root_errors(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    from cplat.errors import InputError

    with pytest.raises(InputError, match="artifact folder") as err:
        LocalArtifactStore(f)
    assert err.value.field == "artifact_root"


# --- S3 via moto -------------------------------------------------------------------------------


@pytest.fixture()
def s3() -> Iterator[Any]:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with moto.mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket="arts")
            yield client
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_s3_round_trip(s3: Any) -> None:
    store = S3ArtifactStore("arts", prefix="team/cplat/", client=s3)

    async def go() -> None:
        assert await store.put("1/r/artifacts/a.txt", b"hello") == 5
        await store.put("1/r/artifacts/sub/b", agen(b"ab", b"cd"))
        assert await store.get_bytes("1/r/artifacts/a.txt") == b"hello"
        assert await store.list_dir("1/r/artifacts") == [
            ArtifactEntry("a.txt", False, 5),
            ArtifactEntry("sub", True, None),
        ]
        assert await store.list_dir("1/r/artifacts/a.txt") == []
        assert await store.list_dir("") == [ArtifactEntry("1", True, None)]
        with pytest.raises(ArtifactNotFoundError):
            await store.open("1/r/artifacts/missing")
        await store.delete("1/r/artifacts/sub")
        assert [e.name for e in await store.list_dir("1/r/artifacts")] == ["a.txt"]

    run(go())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="arts")["Contents"]]
    assert keys == ["team/cplat/1/r/artifacts/a.txt"]  # under the prefix, nowhere else


def test_s3_multipart_and_cap(s3: Any) -> None:
    from cplat.ml.tracking.artifacts import S3_PART

    store = S3ArtifactStore("arts", client=s3)
    big = os.urandom(S3_PART * 2 + 12345)

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def go() -> None:
        assert await store.put("1/big", pieces(big, 1 << 20)) == len(big)
        async with await store.open("1/big") as s:
            assert s.size == len(big)
            assert await s.read_all() == big
        with pytest.raises(ArtifactTooLargeError):
            await store.put("1/over", pieces(big, 1 << 20), max_size=S3_PART + 1)

    run(go())
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="arts")  # the over-cap one aborted
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="arts")["Contents"]] == ["1/big"]


def test_s3_refuses_bad_paths_before_any_request(s3: Any) -> None:
    store = S3ArtifactStore("arts", prefix="p", client=s3)
    for path, _ in BAD_PATHS:
        with pytest.raises(ArtifactPathError):
            run(store.put(path, b"x"))
    assert "Contents" not in s3.list_objects_v2(Bucket="arts")


def test_s3_credentials_not_shown() -> None:
    pytest.importorskip("boto3")
    store = S3ArtifactStore(
        "arts",
        prefix="p",
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI-very-secret",
    )
    assert "very-secret" not in repr(store) and "AKIDEXAMPLE" not in repr(store)
    assert "127.0.0.1:9" in repr(store)


# --- the proxy, driven by the real mlflow client against a real `cplat serve` -------------------

try:
    import mlflow
except ImportError:  # the proxy's tests drive the real client; the storage tests above do not
    mlflow = None

from cplat.testing.served import CLIENT_ENV, Served, serve  # noqa: E402
from cplat.testing.service import ADMIN, token  # noqa: E402

needs_mlflow = pytest.mark.skipif(mlflow is None, reason="needs the mlflow client")

ROOT = "/api/2.0/mlflow-artifacts/artifacts"
MEMBER = token("ana", "vision", "member")
VIEWER = token("vic", "vision", "viewer")
OTHER = token("bob", "audio", "admin")
UPLOAD_LIMIT = 100_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if mlflow is None:
        pytest.skip("needs the mlflow client")
    saved = {k: os.environ.get(k) for k in (*CLIENT_ENV, "CPLAT_MAX_ARTIFACT_UPLOAD")}
    saved |= {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")}
    os.environ.update(CLIENT_ENV)
    os.environ["CPLAT_MAX_ARTIFACT_UPLOAD"] = str(UPLOAD_LIMIT)
    try:
        with serve(tmp_path_factory.mktemp("artifacts")) as s:
            s.use(MEMBER)
            yield s
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def run_id(served: Served) -> str:
    served.use(MEMBER)
    client = mlflow.MlflowClient()
    name = f"exp-{os.urandom(4).hex()}"
    exp = client.create_experiment(name)
    return str(client.create_run(exp).info.run_id)


def artifact_dir(served: Served, run_id: str) -> str:
    """``<experiment_id>/<run_id>/artifacts``: the run's folder in the proxy's paths."""
    uri = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
    assert uri.startswith("mlflow-artifacts:/"), uri
    return str(uri.removeprefix("mlflow-artifacts:/"))


def test_client_log_list_download_round_trip(served: Served, run_id: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {
        "a.txt": b"hello",
        "sub/b.bin": os.urandom(50_000),
        "sub/deeper/c.json": b"{}",
        "sub/é ü.txt": "contenu: é".encode(),
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    client.log_artifacts(run_id, str(src), "folder")
    client.log_artifact(run_id, str(src / "a.txt"))

    top = client.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in top] == [("a.txt", False), ("folder", True)]
    inner = client.list_artifacts(run_id, "folder/sub")
    assert [(f.path, f.is_dir, f.file_size) for f in inner] == [
        ("folder/sub/b.bin", False, 50_000),
        ("folder/sub/deeper", True, None),
        ("folder/sub/é ü.txt", False, len(files["sub/é ü.txt"])),
    ]
    assert client.list_artifacts(run_id, "folder/a.txt") == []  # a file, not a folder

    out = Path(client.download_artifacts(run_id, "folder", str(tmp_path / "dl")))
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files

    # Stored under the data dir, private.
    stored = served.data_dir / "artifacts" / artifact_dir(served, run_id) / "folder" / "a.txt"
    assert stored.read_bytes() == b"hello"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700

    # Download headers: a file to save, never a page of the server's origin.
    path = artifact_dir(served, run_id) + "/folder/a.txt"
    import urllib.request

    req = urllib.request.Request(served.url + f"{ROOT}/{path}")
    req.add_header("Authorization", f"Bearer {VIEWER}")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.read() == b"hello"
        assert r.headers["Content-Disposition"].startswith("attachment;")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Length"] == "5"

    # delete_artifacts of a folder, then of the rest.
    assert served.call("DELETE", f"{ROOT}/{artifact_dir(served, run_id)}/folder/sub", MEMBER) == (
        200,
        {},
    )
    assert [f.path for f in client.list_artifacts(run_id, "folder")] == ["folder/a.txt"]


def test_another_project_sees_nothing(served: Served, run_id: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    (tmp_path / "f.txt").write_text("secret")
    client.log_artifact(run_id, str(tmp_path / "f.txt"))
    base = artifact_dir(served, run_id)
    for method, path, body in (
        ("GET", f"{ROOT}/{base}/f.txt", None),
        ("GET", f"{ROOT}?path={base}", None),
        ("PUT", f"{ROOT}/{base}/g.txt", b"x"),
        ("DELETE", f"{ROOT}/{base}/f.txt", None),
        # An experiment that does not exist answers the same.
        ("GET", f"{ROOT}/999999/{run_id}/artifacts/f.txt", None),
    ):
        status, answer = served.call(method, path, OTHER, raw=body)
        assert status == 404, (method, path, answer)
        assert answer["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # Through the client too: the other project's token gets MLflow's not-found error.
    served.use(OTHER)
    try:
        with pytest.raises(mlflow.exceptions.MlflowException) as err:
            mlflow.MlflowClient().download_artifacts(run_id, "f.txt", str(tmp_path / "o"))
        assert "RESOURCE_DOES_NOT_EXIST" in str(err.value) or "404" in str(err.value)
    finally:
        served.use(MEMBER)
    assert (served.data_dir / "artifacts" / base / "f.txt").read_text() == "secret"
    assert not (served.data_dir / "artifacts" / base / "g.txt").exists()
    assert served.call("GET", f"{ROOT}/{base}/f.txt", None)[0] == 401


def test_viewer_reads_but_cannot_write(served: Served, run_id: str, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("mine")
    mlflow.MlflowClient().log_artifact(run_id, str(tmp_path / "f.txt"))
    served.use(VIEWER)
    try:
        viewer = mlflow.MlflowClient()
        assert [f.path for f in viewer.list_artifacts(run_id)] == ["f.txt"]
        with pytest.raises(Exception, match="403|PERMISSION_DENIED"):
            viewer.log_artifact(run_id, str(tmp_path / "f.txt"), "copy")
    finally:
        served.use(MEMBER)
    base = artifact_dir(served, run_id)
    status, answer = served.call("DELETE", f"{ROOT}/{base}/f.txt", VIEWER)
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    assert served.call("GET", f"{ROOT}?path={base}", VIEWER)[1] == {
        "files": [{"path": "f.txt", "is_dir": False, "file_size": 4}]
    }

    # Every write is audited, refused ones too; another project's under its caller's project.
    served.call("PUT", f"{ROOT}/{base}/x", OTHER, raw=b"x")
    status, audit = served.call("GET", "/v1/audit?limit=1000", ADMIN)
    assert status == 200
    mine = [e for e in audit["entries"] if e["target"].startswith(f"artifact/{base}")]
    seen = {(e["user"], e["project"], e["action"].split()[0], e["status"]) for e in mine}
    assert ("ana", "vision", "PUT", 200) in seen
    assert ("vic", "vision", "PUT", 403) in seen
    assert ("vic", "vision", "DELETE", 403) in seen
    assert ("bob", "audio", "PUT", 404) in seen


@pytest.mark.parametrize(
    "tail",
    [
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/x",
        "a%5Cb",  # backslash
        "a%00b",  # NUL
        "a//b",
        "./x",
        "x" * 300,
        ".cplat-upload-1",
    ],
)
def test_escapes_refused_over_http(served: Served, run_id: str, tail: str) -> None:
    base = artifact_dir(served, run_id)
    for method in ("GET", "PUT", "DELETE"):
        status, answer = served.call(method, f"{ROOT}/{base}/{tail}", MEMBER, raw=b"x")
        assert status == 400, (method, tail, answer)
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert answer["field"] == "path"
    status, answer = served.call("GET", f"{ROOT}?path={base}/{tail}", MEMBER)
    assert (status, answer.get("field")) == (400, "path")
    # Nothing was stored: not in the run's folder, not beside the experiments' folders.
    assert served.call("GET", f"{ROOT}?path={base}", MEMBER) == (200, {"files": []})
    assert all(p.name.isdigit() for p in (served.data_dir / "artifacts").iterdir())


def test_paths_that_name_no_file(served: Served, run_id: str) -> None:
    base = artifact_dir(served, run_id)
    served.call("PUT", f"{ROOT}/{base}/d/f", MEMBER, raw=b"x")
    cases = [
        ("GET", f"{ROOT}/{base}/d", 400, "INVALID_PARAMETER_VALUE"),  # a folder
        ("GET", f"{ROOT}/{base}/missing", 404, "RESOURCE_DOES_NOT_EXIST"),
        ("PUT", f"{ROOT}/{base}/d/f/g", 400, "INVALID_PARAMETER_VALUE"),  # through a file
        ("PUT", f"{ROOT}/{base}/d", 400, "INVALID_PARAMETER_VALUE"),  # over a folder
        ("GET", f"{ROOT}?path=", 400, "INVALID_PARAMETER_VALUE"),  # everyone's root
        ("GET", f"{ROOT}", 400, "INVALID_PARAMETER_VALUE"),
        ("GET", f"{ROOT}/notanid/x", 404, "RESOURCE_DOES_NOT_EXIST"),
    ]
    for method, path, want, code in cases:
        status, answer = served.call(method, path, MEMBER, raw=b"x" if method == "PUT" else None)
        assert (status, answer["error_code"]) == (want, code), (method, path, answer)


def test_upload_cap(served: Served, run_id: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    base = artifact_dir(served, run_id)
    status, answer = served.call("PUT", f"{ROOT}/{base}/ok", MEMBER, raw=b"x" * UPLOAD_LIMIT)
    assert status == 200, answer
    status, answer = served.call("PUT", f"{ROOT}/{base}/big", MEMBER, raw=b"x" * (UPLOAD_LIMIT + 1))
    assert status == 413 and answer["field"] == "body", answer
    assert "max_artifact_upload" in answer["message"]

    # Without a Content-Length (chunked), the cap is counted as the body streams in.
    url = urlsplit(served.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("PUT", f"{ROOT}/{base}/chunked")
        conn.putheader("Authorization", f"Bearer {MEMBER}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        piece = b"y" * 30_000
        for _ in range(5):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert resp.status == 413, resp.read()
    finally:
        conn.close()
    names = [e["path"] for e in served.call("GET", f"{ROOT}?path={base}", MEMBER)[1]["files"]]
    assert names == ["ok"]


def test_upload_cut_short_stores_nothing(served: Served, run_id: str) -> None:
    import socket
    import time
    from urllib.parse import urlsplit

    base = artifact_dir(served, run_id)
    url = urlsplit(served.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            f"PUT {ROOT}/{base}/cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MEMBER}\r\n"
            "Content-Length: 50000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 1000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connection asynchronously
        _, audit = served.call("GET", "/v1/audit?limit=1000", ADMIN)
        cut = [e for e in audit["entries"] if e["target"] == f"artifact/{base}/cut"]
        if cut or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["status"] for e in cut] == [400]
    assert served.call("GET", f"{ROOT}?path={base}", MEMBER) == (200, {"files": []})
    assert list((served.data_dir / "artifacts" / base).iterdir()) == []  # no temporary file


def test_sklearn_model_registry_round_trip(served: Served) -> None:
    sklearn = pytest.importorskip("sklearn")
    del sklearn
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    mlflow.set_experiment(f"iris-{os.urandom(4).hex()}")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", input_example=x[:2])
    name = f"iris-{os.urandom(4).hex()}"
    version = mlflow.register_model(info.model_uri, name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, "champion", version.version)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert np.array_equal(loaded.predict(x), model.predict(x))
    by_number = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    assert np.array_equal(by_number.predict(x), model.predict(x))
    # The model's files are the logged model's, behind the same tenancy.
    served.use(OTHER)
    try:
        with pytest.raises(mlflow.exceptions.MlflowException):
            mlflow.pyfunc.load_model(info.model_uri)
    finally:
        served.use(MEMBER)


# --- settings ------------------------------------------------------------------------------------


BUCKET = {"CPLAT_ARTIFACT_S3_BUCKET": "bkt"}


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CPLAT_MAX_ARTIFACT_UPLOAD": "0"}, "max_artifact_upload"),
        ({"CPLAT_MAX_ARTIFACT_UPLOAD": "-5"}, "max_artifact_upload"),
        ({"CPLAT_MAX_ARTIFACT_UPLOAD": "lots"}, "CPLAT_MAX_ARTIFACT_UPLOAD"),
        ({"CPLAT_ARTIFACT_S3_PREFIX": "p"}, "artifact_s3_prefix"),
        ({"CPLAT_ARTIFACT_S3_BUCKET": "b!"}, "artifact_s3_bucket"),
        ({**BUCKET, "CPLAT_ARTIFACT_ROOT": "/x"}, "artifact_root"),
        ({**BUCKET, "CPLAT_ARTIFACT_S3_PREFIX": "a/../b"}, "artifact_s3_prefix"),
        ({**BUCKET, "CPLAT_ARTIFACT_S3_ENDPOINT": "minio:9000"}, "artifact_s3_endpoint"),
        (
            {**BUCKET, "CPLAT_ARTIFACT_S3_ENDPOINT": "http://k:s@minio:9000"},
            "artifact_s3_endpoint",
        ),
        (
            {**BUCKET, "CPLAT_ARTIFACT_S3_ACCESS_KEY_ID": "AKID"},
            "artifact_s3_secret_access_key",
        ),
    ],
)  # fmt: skip
def test_settings_refused(env: dict[str, str], field: str) -> None:
    from cplat.errors import InputError
    from cplat_server.config import load_config

    with pytest.raises(InputError) as err:
        load_config(env=env)
    assert err.value.field == field, str(err.value)


def test_settings_s3_and_local(tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    from cplat_server.config import load_config
    from cplat_server.views.mlflow_compat.artifacts import open_artifact_store

    env = {
        "CPLAT_DATA_DIR": str(tmp_path / "data"),
        "CPLAT_ARTIFACT_S3_BUCKET": "bkt",
        "CPLAT_ARTIFACT_S3_PREFIX": "team/arts",
        "CPLAT_ARTIFACT_S3_ENDPOINT": "http://127.0.0.1:9",
        "CPLAT_ARTIFACT_S3_REGION": "us-east-1",
        "CPLAT_ARTIFACT_S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "CPLAT_ARTIFACT_S3_SECRET_ACCESS_KEY": "very-secret-key",
        "CPLAT_MAX_ARTIFACT_UPLOAD": "1048576",
    }
    cfg = load_config(env=env)
    assert cfg.max_artifact_upload == 1 << 20
    assert "very-secret-key" not in repr(cfg) and "AKIDEXAMPLE" not in repr(cfg)
    store = open_artifact_store(cfg)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == ("bkt", "team/arts")
    assert "very-secret-key" not in repr(store)

    local = open_artifact_store(load_config(env={"CPLAT_DATA_DIR": str(tmp_path / "d2")}))
    assert isinstance(local, LocalArtifactStore)
    assert local.root == (tmp_path / "d2" / "artifacts").resolve()
    other = open_artifact_store(
        load_config(env={"CPLAT_ARTIFACT_ROOT": str(tmp_path / "elsewhere")})
    )
    assert isinstance(other, LocalArtifactStore) and other.root.name == "elsewhere"


def test_s3_backend_behind_the_proxy(s3: Any, tmp_path: Path) -> None:
    """The proxy over S3 storage (moto in-process): upload, list, download, delete."""
    from cplat.ml.tracking import open_tracking_store
    from cplat.testing.service import SECRET
    from cplat_server.config import ServiceConfig
    from cplat_server.views.mlflow_compat.artifacts import (
        ARTIFACTS,
        delete_artifact,
        download_artifact,
        list_artifacts,
        upload_artifact,
    )
    from cplat_server.views.mlflow_compat.common import TRACKING

    async def go() -> None:
        import aiohttp
        from aiohttp import web

        from cplat.store import open_store
        from cplat_server.auth import Revocations
        from cplat_server.keys import CONFIG, STORE
        from cplat_server.keys import SECRET as SECRET_KEY
        from cplat_server.views.tokens import REVOKED

        data = tmp_path / "data"
        data.mkdir()
        cfg = ServiceConfig(data_dir=data, jwt_secret=SECRET, max_artifact_upload=1000)
        app = web.Application()
        app[CONFIG] = cfg
        app[SECRET_KEY] = SECRET
        app[REVOKED] = Revocations()
        app[ARTIFACTS] = S3ArtifactStore("arts", prefix="cplat", client=s3)
        tracking = await open_tracking_store(cfg.store_url, data)
        store = await open_store(cfg.store_url)
        app[TRACKING] = tracking
        app[STORE] = store
        exp = await tracking.create_experiment("vision", "e")
        for method, path, handler in (
            ("GET", "/a", list_artifacts),
            ("GET", "/a/{path:.+}", download_artifact),
            ("PUT", "/a/{path:.+}", upload_artifact),
            ("DELETE", "/a/{path:.+}", delete_artifact),
        ):
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/a"
        auth = {"Authorization": f"Bearer {MEMBER}"}
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                async with http.put(f"{url}/{exp}/r/artifacts/m.bin", data=b"m" * 1000) as r:
                    assert r.status == 200, await r.text()
                async with http.put(f"{url}/{exp}/r/artifacts/big", data=b"m" * 1001) as r:
                    assert r.status == 413
                async with http.get(url, params={"path": f"{exp}/r/artifacts"}) as r:
                    assert await r.json() == {
                        "files": [{"path": "m.bin", "is_dir": False, "file_size": 1000}]
                    }
                async with http.get(f"{url}/{exp}/r/artifacts/m.bin") as r:
                    assert await r.read() == b"m" * 1000
                async with http.get(
                    f"{url}/{exp}/r/artifacts/m.bin", headers={"Authorization": f"Bearer {OTHER}"}
                ) as r:
                    assert r.status == 404
                async with http.delete(f"{url}/{exp}/r") as r:
                    assert r.status == 200
        finally:
            await runner.cleanup()
            await tracking.close()
            await store.close()

    run(go())
    assert "Contents" not in s3.list_objects_v2(Bucket="arts")


@needs_mlflow
def test_serve_with_an_s3_endpoint(tmp_path: Path) -> None:
    """`cplat serve` configured for an S3-compatible endpoint (moto's server on loopback)."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from cplat.testing.served import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "cplat-test", "aws_secret_access_key": "cplat-test-secret"}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
    s3.create_bucket(Bucket="arts")
    settings = {
        "CPLAT_ARTIFACT_S3_BUCKET": "arts",
        "CPLAT_ARTIFACT_S3_PREFIX": "cplat",
        "CPLAT_ARTIFACT_S3_ENDPOINT": endpoint,
        "CPLAT_ARTIFACT_S3_REGION": "us-east-1",
        "CPLAT_ARTIFACT_S3_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "CPLAT_ARTIFACT_S3_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "CPLAT_MAX_ARTIFACT_UPLOAD": str(64 << 20),
    }
    keys = (*settings, *CLIENT_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(settings)
    os.environ.update(CLIENT_ENV)
    try:
        with serve(tmp_path) as served:
            served.use(MEMBER)
            client = mlflow.MlflowClient()
            run = client.create_run(client.create_experiment("s3")).info
            src = tmp_path / "src"
            (src / "sub").mkdir(parents=True)
            # Past the service's JSON body limit (1 MiB) and S3's part size: streamed, multipart.
            weights = os.urandom(9 << 20)
            (src / "sub" / "w.bin").write_bytes(weights)
            client.log_artifacts(run.run_id, str(src))
            assert [f.path for f in client.list_artifacts(run.run_id, "sub")] == ["sub/w.bin"]
            out = client.download_artifacts(run.run_id, "sub/w.bin", str(tmp_path / "dl"))
            assert Path(out).read_bytes() == weights
            log = (tmp_path / "serve.log").read_text()
        assert not (served.data_dir / "artifacts").exists()  # nothing kept locally
        assert creds["aws_secret_access_key"] not in log
        base = run.artifact_uri.removeprefix("mlflow-artifacts:/")
        keys_stored = [o["Key"] for o in s3.list_objects_v2(Bucket="arts")["Contents"]]
        assert keys_stored == [f"cplat/{base}/sub/w.bin"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@needs_mlflow
@pytest.mark.skipif(not os.environ.get("CPLAT_TEST_PG_DSN"), reason="set CPLAT_TEST_PG_DSN")
def test_refused_paths_are_audited_on_postgres(tmp_path: Path) -> None:
    """PostgreSQL keeps no NUL in text or JSON: the audit of a refused path must still land."""
    dsn = os.environ["CPLAT_TEST_PG_DSN"]
    keys = (*CLIENT_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(CLIENT_ENV)
    try:
        with serve(tmp_path, db=dsn) as served:
            served.use(MEMBER)
            client = mlflow.MlflowClient()
            exp = client.create_experiment(f"pg-{os.urandom(4).hex()}")
            for tail in ("a%00b", "c%1Bd", "ok"):
                status, _ = served.call("PUT", f"{ROOT}/{exp}/r/{tail}", MEMBER, raw=b"x")
                assert status == (200 if tail == "ok" else 400), tail
            # The shared database holds other tests' entries too: read every page.
            entries: list[dict[str, Any]] = []
            cursor = ""
            while True:
                status, audit = served.call("GET", f"/v1/audit?limit=1000{cursor}", ADMIN)
                assert status == 200
                entries += audit["entries"]
                if audit["next_cursor"] is None:
                    break
                cursor = f"&after={audit['next_cursor']}"
            mine = [e for e in entries if e["target"].startswith(f"artifact/{exp}/r/")]
            assert sorted(e["status"] for e in mine) == [200, 400, 400]
            assert f"artifact/{exp}/r/a\\x00b" in {e["target"] for e in mine}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
