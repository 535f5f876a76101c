"""CLI contract: `memrl train` writes a checkpoint + curves; `memrl eval --json` ends with one JSON object."""
import json
import os
import subprocess
import sys

from memrl.cli import main
from memrl.ppo import evaluate_policy, load_policy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_eval_json_plot(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--horizon", "6", "--num-envs", "64", "--controller", "gru",
                 "--total-steps", "6000", "--eval-episodes", "100", "--no-progress", "--seed", "0"])
    assert code == 0
    assert (run / "checkpoint.pt").exists() and (run / "curves.png").exists() and (run / "metrics.jsonl").exists()
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows and {"success", "gate_mean", "approx_kl", "sps", "explained_var"} <= set(rows[0])

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "memrl", "eval", str(run / "checkpoint.pt"), "--episodes", "50",
                          "--seed", "3", "--device", "cpu", "--json"], capture_output=True, text=True, env=env,
                         check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    model, _ = load_policy(str(run / "checkpoint.pt"))
    expect = evaluate_policy(model, dict(horizon=6, num_cues=2, noise=0.0), 50, 3, "cpu")  # greedy, seed 3
    assert res["episodes"] == 50 and res["success_rate"] == expect["success_rate"]
    assert res["mean_return"] == expect["mean_return"]
    again = main(["eval", str(run / "checkpoint.pt"), "--episodes", "50", "--seed", "3", "--device", "cpu", "--json"])
    assert again == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["success_rate"] == res["success_rate"]

    os.remove(run / "curves.png")
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").exists()


def test_resume_flag_continues(tmp_path):
    run = tmp_path / "run"
    base = ["--horizon", "5", "--num-envs", "16", "--controller", "gru", "--no-progress", "--eval-episodes", "50",
            "--target-success", "1.1"]
    assert main(["train", "--out", str(run), "--total-steps", "160", *base]) == 0
    assert main(["train", "--resume", str(run), "--total-steps", "320", *base]) == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["update"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def test_cli_reports_bad_arguments_without_traceback(tmp_path, capsys):
    from memrl.cli import main
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "memrl eval: error:" in capsys.readouterr().err
    assert main(["train", "--horizon", "1", "--out", str(tmp_path / "run")]) == 2
    assert "horizon must be >= 2" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
