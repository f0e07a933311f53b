"""Atomic writes: whole files with the usual permissions, nothing left on failure."""

import os

import pytest
from sb_urbansound.atomic import atomic_write_json, atomic_write_text


def test_atomic_write_has_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
