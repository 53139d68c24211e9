"""dsm.plumbing.store against real servers on 127.0.0.1: moto's S3 server and http.server."""

from __future__ import annotations

import logging

import pytest

from dsm.plumbing import store
from dsm.plumbing.store import Location, StoreError
from tests import servers


@pytest.fixture(autouse=True)
def fresh_clients():
    """s3fs caches a client per argument set, with the credentials it found: tests that change
    the environment need new ones."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_locations_keep_urls_and_resolve_paths(tmp_path):
    assert Location.of("s3://b/x/").url == "s3://b/x"
    assert Location.of(f"file://{tmp_path}/a").url == str(tmp_path / "a")
    assert (Location.of("s3://b/x") / "m.json").url == "s3://b/x/m.json"
    assert Location.of("s3://b/x/m.json").parent.name == "x" and not Location.of("gs://b").is_local
    assert str(Location.of("https://user:pw@host/d")) == "https://host/d"
    with pytest.raises(ValueError, match="not a local path"):
        _ = Location.of("s3://b/x").path


def test_s3_round_trip_and_listing(bucket, tmp_path):
    folder = Location.of(f"{bucket}/data")
    assert folder.listing() == {} and not (folder / "a.txt").is_file()
    (folder / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(b"\0" * 1000)
    (folder / "b.bin").upload(tmp_path / "b.bin")
    assert (folder / "a.txt").read_text() == "hello" and (folder / "b.bin").size() == 1000
    assert folder.listing() == {"a.txt": 5, "b.bin": 1000}
    assert [s.name for s in Location.of(bucket).subfolders()] == ["data"]
    (folder / "a.txt").remove()
    (folder / "a.txt").remove()  # already gone: nothing
    assert folder.listing() == {"b.bin": 1000}


def test_a_missing_object_is_one_line_naming_it(bucket):
    with pytest.raises(StoreError) as e:
        Location.of(f"{bucket}/nope.tar").read_bytes()
    assert str(e.value) == f"{bucket}/nope.tar: no such file or object"


def test_missing_credentials_say_how_to_give_them(bucket, monkeypatch):
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    s3fs.S3FileSystem.clear_instance_cache()  # the bucket fixture's client holds credentials
    with pytest.raises(StoreError) as e:
        Location.of(f"{bucket}/x").read_bytes()
    assert str(e.value).startswith(f"{bucket}/x: no credentials found for s3://")
    assert "AWS_ACCESS_KEY_ID" in str(e.value) and "\n" not in str(e.value)


def test_an_unreachable_endpoint_is_retried_then_one_line(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{servers.free_port()}")
    monkeypatch.setenv(store.RETRIES_ENV, "2")
    before = store.retry_count()
    with caplog.at_level(logging.WARNING, "dsm.plumbing.store"), pytest.raises(StoreError) as e:
        Location.of("s3://nowhere/x").read_bytes()
    msg = str(e.value)
    assert msg.startswith("s3://nowhere/x: reading failed after 2 retries: cannot reach the server")
    assert "AWS_ENDPOINT_URL" in msg and "\n" not in msg
    assert store.retry_count() - before == 2
    assert [r.getMessage().split(";")[1].strip()[:12] for r in caplog.records] == ["retry 1 of 2", "retry 2 of 2"]


def test_http_reads_and_names_a_404_and_a_403(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with servers.HTTPServer(tmp_path) as srv:
        assert Location.of(f"{srv.url}/a.txt").read_text() == "hi"
        assert Location.of(f"{srv.url}/a.txt").size() == 2
        with pytest.raises(StoreError, match=r"^http://127\.0\.0\.1:\d+/b\.txt: no such file or object \(HTTP 404\)$"):
            Location.of(f"{srv.url}/b.txt").read_bytes()
        with pytest.raises(StoreError, match="read-only"):
            Location.of(f"{srv.url}/c.txt").write_text("no")
    with servers.HTTPServer(tmp_path, fail_first=100, fail_status=403) as srv:
        with pytest.raises(StoreError, match=r"/a\.txt: access denied \(HTTP 403\)"):
            Location.of(f"{srv.url}/a.txt").read_bytes()
        assert srv.state["gets"] == 1  # not retried


def test_transient_http_errors_are_retried_counted_and_logged(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(store.RETRIES_ENV, "3")
    (tmp_path / "a.txt").write_text("hi")
    before = store.retry_count()
    with servers.HTTPServer(tmp_path, fail_first=2, fail_status=503) as srv, \
            caplog.at_level(logging.WARNING, "dsm.plumbing.store"):
        assert Location.of(f"{srv.url}/a.txt").read_text() == "hi"
    assert store.retry_count() - before == 2 and srv.state["gets"] == 3
    assert len(caplog.records) == 2 and "503" in caplog.records[0].getMessage()
    assert f"{srv.url}/a.txt" in caplog.records[0].getMessage()


def test_retries_are_bounded_and_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv(store.RETRIES_ENV, "1")
    (tmp_path / "a.txt").write_text("hi")
    with servers.HTTPServer(tmp_path, fail_first=100, fail_status=502) as srv:
        with pytest.raises(StoreError, match=r"reading failed after 1 retries"):
            Location.of(f"{srv.url}/a.txt").read_bytes()
        assert srv.state["gets"] == 2
    monkeypatch.setenv(store.RETRIES_ENV, "many")
    with pytest.raises(ValueError, match="DSM_IO_RETRIES"):
        Location.of(f"{srv.url}/a.txt").read_bytes()
