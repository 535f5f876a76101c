"""One line per logged update of a memrl run: update, env steps, training horizon, rollout success, evaluation,
wall time, env-steps/s.

    python3 bench/run_summary.py RUN_DIR [--last N]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memrl.ppo.logger import read_metrics  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--last", type=int, default=0, help="only the last N updates (0 = all)")
    args = ap.parse_args()
    rows = read_metrics(args.run_dir)
    for r in rows[-args.last:] if args.last else rows:
        print(f"  upd {r.get('update')} steps {r.get('env_steps')} H {r.get('train_horizon')} "
              f"succ {r.get('success', 0):.3f} eval {r.get('eval_success', '-')} wall {r.get('wall', 0):.1f}s "
              f"sps {r.get('sps', 0):.0f}")


if __name__ == "__main__":
    main()
