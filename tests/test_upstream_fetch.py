"""tests/upstream.py: the parity tests' source of upstream mamba_ssm. A fetch that cannot succeed raises with pip's
own output (never returns a half-made tree); a fetched tree imports upstream's module without its package init."""
import os

import pytest

import upstream


def test_unfetchable_version_raises_with_pips_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_COMPAT_CACHE", str(tmp_path))
    monkeypatch.setattr(upstream, "VERSION", "0.0.0.does.not.exist")
    with pytest.raises(upstream.UpstreamUnavailable, match=r"pip download .*mamba-ssm==0\.0\.0\.does\.not\.exist"):
        upstream.upstream_root()
    assert os.listdir(tmp_path) == []  # nothing left behind


def test_fetched_tree_imports_upstream_modules():
    mod = upstream.import_upstream("modules.ssd_minimal")
    assert callable(mod.ssd_minimal_discrete)
    assert os.path.isfile(os.path.join(upstream.upstream_root(), "mamba_ssm", "modules", "mamba2.py"))
