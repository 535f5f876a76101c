"""Re-check the "old shim: passed" claims of test_shim_blind_spots.py: builds every mutation there against the
shim as it was at commit 4d96ca9 (taken from git) and prints the old shim's probe result: the error against
the float64 oracle (relative to max(1, max |oracle|); the tests' bounds are 2e-5 / 5e-5) or what it raised.
Not a test (it needs the repository's history); run `nice -n 15 python tests/metal/blind_spots_vs_old_shim.py`.
Measured 2026-12-02 (g++ 12.2, x86-64): every mutation 1.2e-7 (forward probes) or 7.1e-7 (backward probes),
i.e. the old shim passed all of them.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OLD_COMMIT = "4d96ca9"

PROBE = r'''
import sys
sys.path[:0] = [{old!r}, {here!r}]
import shim_build  # the old one
assert shim_build.__file__.startswith({old!r}), shim_build.__file__
import test_shim_blind_spots as t
probe = t.MUTATIONS[{name!r}][3]
try:
    print("old shim:", repr(probe(shim_build.Shim(shim_build.build(16, src_dir={src!r})))))
except Exception as e:
    print("old shim: raised", type(e).__name__, str(e)[:200])
'''


def main() -> int:
    sys.path.insert(0, str(HERE))
    import test_shim_blind_spots as t

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "tests/metal"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for name in t.MUTATIONS:
            src = t.mutant_dir(Path(tmp), name)
            res = subprocess.run([sys.executable, "-c", PROBE.format(old=str(old / "tests" / "metal"), here=str(HERE),
                                                                     name=name, src=str(src))],
                                 capture_output=True, text=True, cwd=str(ROOT))
            print(f"{name:32s} {res.stdout.strip() or res.stderr.strip()[-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
