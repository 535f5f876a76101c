"""Summarise the errors that tests/op_testing.assert_close recorded (MAMBA_COMPAT_RECORD_ERRORS=FILE): per test
and output, the measured relative RMSE, the bound the test allows and their ratio (headroom), worst first.

    MAMBA_COMPAT_RECORD_ERRORS=/tmp/err.jsonl python -m pytest tests/test_triton.py && python bench/tolerances.py /tmp/err.jsonl
"""
import json
import sys


def main(path: str) -> None:
    worst: dict = {}
    for line in open(path):
        r = json.loads(line)
        key = (r["test"].split("::", 1)[-1], r["name"], r["dtype"], r["device"])
        if key not in worst or r["rel"] > worst[key]["rel"]:
            worst[key] = r
    rows = sorted(worst.values(), key=lambda r: -r["rel"] / r["bound"])
    print(f"{'test':58s} {'output':16s} {'dtype':15s} {'measured':>9s} {'bound':>9s} {'bound/measured':>14s}")
    for r in rows:
        head = f"{r['bound'] / r['rel']:14.0f}" if r["rel"] > 0 else f"{'exact':>14s}"
        print(f"{r['test'].split('::', 1)[-1][:58]:58s} {r['name'][:16]:16s} {r['dtype'][6:]:15s} {r['rel']:9.2e} "
              f"{r['bound']:9.1e} {head}")


if __name__ == "__main__":
    main(sys.argv[1])
