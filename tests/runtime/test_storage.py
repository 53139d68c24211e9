"""The shared-storage check (dsm.runtime.storage): pure, no Ray. The integration (dsm train refusing
node-local storage on a 3-node cluster) is in tests/train/test_multinode.py."""

import pytest

from dsm.plumbing.config import ConfigError
from dsm.runtime.storage import check_shared_storage, is_shared_uri, shared_storage_declared


def test_single_node_anything_goes():
    check_shared_storage("/tmp/dsm-runs/runs", nodes_alive=1, declared_shared=False)


def test_node_local_path_on_two_nodes_is_refused_with_the_fix():
    with pytest.raises(ConfigError) as e:
        check_shared_storage("/tmp/dsm-runs/runs", nodes_alive=2, declared_shared=False)
    msg = str(e.value)
    assert "/tmp/dsm-runs/runs" in msg and "2 alive nodes" in msg and "DSM_SHARED_STORAGE=1" in msg


def test_cloud_uris_and_declared_paths_pass():
    for uri in ("s3://bucket/runs", "gs://bucket/runs", "GS://b/x"):
        assert is_shared_uri(uri)
        check_shared_storage(uri, nodes_alive=5, declared_shared=False)
    check_shared_storage("/mnt/nfs/runs", nodes_alive=5, declared_shared=True)
    assert not is_shared_uri("/mnt/nfs/runs") and not is_shared_uri("file:///x") and not is_shared_uri("s3bucket")


def test_declaration_comes_from_the_environment(monkeypatch):
    assert shared_storage_declared({"DSM_SHARED_STORAGE": "1"})
    assert shared_storage_declared({"DSM_SHARED_STORAGE": "True"})
    assert not shared_storage_declared({"DSM_SHARED_STORAGE": "0"}) and not shared_storage_declared({})
    monkeypatch.setenv("DSM_SHARED_STORAGE", "yes")
    check_shared_storage("/mnt/nfs/runs", nodes_alive=3)  # None: read from the environment
    monkeypatch.setenv("DSM_SHARED_STORAGE", "0")
    with pytest.raises(ConfigError):
        check_shared_storage("/mnt/nfs/runs", nodes_alive=3)
