"""The virtctl the upload tests drive is KubeVirt's real one, at the pinned release.

No cluster is needed: these only check that ``scripts/virtctl-build`` produced the genuine
binary (its version stamped the way KubeVirt's release builds stamp it) and that its
``image-upload`` still has every flag our own upload client mirrors.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kubeenv.virtctl import REPO, ensure_virtctl

# every image-upload flag our client must match, name for name
UPLOAD_FLAGS = (
    "--image-path", "--archive-path", "--size", "--storage-class", "--access-mode",
    "--volume-mode", "--no-create", "--force-bind", "--uploadproxy-url", "--insecure",
    "--wait-secs", "--retry", "--datasource",
)


def pinned_version() -> str:
    """The kubevirt.io/kubevirt version tools/virtctl/go.mod requires."""
    gomod = (REPO / "tools" / "virtctl" / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?kubevirt\.io/kubevirt\s+(v\S+)", gomod, re.MULTILINE)
    assert match, "tools/virtctl/go.mod pins no kubevirt.io/kubevirt"
    return match.group(1)


@pytest.fixture(scope="module")
def virtctl() -> Path:
    return ensure_virtctl()


def run(virtctl: Path, *args: str) -> str:
    proc = subprocess.run([str(virtctl), *args], check=False, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_client_version_is_the_pinned_release(virtctl: Path) -> None:
    out = run(virtctl, "version", "--client")
    # Client Version: version.Info{GitVersion:"v1.7.0", GitCommit:"50b9...", GitTreeState:"clean", ...}
    assert f'GitVersion:"{pinned_version()}"' in out, out
    assert 'GitTreeState:"clean"' in out, out


def test_image_upload_has_the_flags_our_client_mirrors(virtctl: Path) -> None:
    out = run(virtctl, "image-upload", "--help")
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", out, re.MULTILINE))
    missing = [f for f in UPLOAD_FLAGS if f not in flags]
    assert not missing, f"virtctl image-upload lacks {missing}:\n{out}"
