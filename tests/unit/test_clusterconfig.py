"""clusterconfig: the cluster config YAML is parsed in a child, once per version of the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usagestatsd.facts.clusterconfig import MAX_CONFIG_BYTES, load_cluster_config
from usagestatsd.facts.sources import SourceError

AWS = b"provider: {type: aws}\nmin_workers: 1\nmax_workers: 4\n"
GCP = b"provider: {type: gcp}\nmin_workers: 2\nmax_workers: 8\n"  # same size as AWS


async def test_parsed_once_while_the_file_is_unchanged(tmp_path: Path) -> None:
    """Same device, inode, size and mtime: the earlier result is reused, not re-parsed."""
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_bytes(AWS)
    first = await load_cluster_config(path)
    assert (first.cloud_provider, first.min_workers, first.max_workers) == ("aws", 1, 4)
    st = path.stat()
    with open(path, "r+b") as f:  # same inode, same size, mtime put back
        f.write(GCP)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert await load_cluster_config(path) == first
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new version: read again
    assert (await load_cluster_config(path)).cloud_provider == "gcp"


async def test_too_large_or_broken_is_a_named_problem(tmp_path: Path) -> None:
    """Over the cap, or not YAML: a SourceError naming the file; absent: FileNotFoundError."""
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(SourceError, match="larger than"):
        await load_cluster_config(path)
    path.write_bytes(b"provider: [unclosed\n  - : :")
    with pytest.raises(SourceError, match="not valid YAML") as info:
        await load_cluster_config(path)
    assert info.value.source == f"cluster config file {path}"
    with pytest.raises(FileNotFoundError):
        await load_cluster_config(tmp_path / "absent.yaml")
