"""CLI contract: `memrl train` writes a checkpoint + curves; `memrl eval --json` ends with one JSON object."""
import json
import os
import subprocess
import sys

import pytest

from memrl.cli import main
from memrl.ppo import PPOTrainer, evaluate_policy, load_policy

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
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err == f"memrl eval: error: no checkpoint at {tmp_path / 'missing.pt'}\n"
    assert main(["train", "--horizon", "1", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "memrl train: error: --horizon must be >= 2, got 1\n"
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    missing = tmp_path / "nothing" / "metrics.jsonl"
    assert capsys.readouterr().err == f"memrl plot: error: nothing logged: no {missing}\n"
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("flags,message", [
    (["--num-envs", "0"], "--num-envs must be >= 1, got 0"),
    (["--num-envs", "12"], "--num-envs must be a multiple of num_minibatches (8), got 12"),
    (["--total-steps", "0"], "--total-steps must be >= 1, got 0"),
    (["--env", "Maze"], "--env must be one of DelayedCue, TMaze, RepeatFirst, a registered gymnasium id or "
                        "module:Class, got 'Maze'"),
    (["--controller", "rnn"], "--controller must be one of mamba2, gru, lstm, got 'rnn'"),
    (["--device", "gpu"], "--device must be one of auto, cpu, cuda, mps or cuda:N, got 'gpu'"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--env", "TMaze", "--num-cues", "3"], "--num-cues must be 2 for TMaze (it has 2 arms), got 3"),
    (["--total-steps", "2e7"], "argument --total-steps: invalid int value: '2e7' (see memrl train --help)"),
])
def test_bad_train_flag_is_one_line(tmp_path, capsys, flags, message):
    code = 2
    try:
        code = main(["train", "--out", str(tmp_path / "run"), *flags])
    except SystemExit as stop:  # argparse's own type check
        code = stop.code
    assert code == 2
    assert capsys.readouterr().err == f"memrl train: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_bad_resume_and_eval_arguments_are_one_line(tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err == f"memrl train: error: --resume {run}: no checkpoint at {run / 'checkpoint.pt'}\n"
    assert tiny_train("--out", run, "--total-steps", 1, "--no-progress") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--num-envs", "32"]) == 2
    assert capsys.readouterr().err == (f"memrl train: error: --resume {run}: --num-envs (32) differs from the run's "
                                       f"num_envs = 16; a resumed run keeps its model and env shapes (start a new "
                                       f"run)\n")
    assert main(["eval", str(run / "checkpoint.pt"), "--episodes", "0"]) == 2
    assert capsys.readouterr().err == "memrl eval: error: --episodes must be >= 1, got 0\n"
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["eval", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"memrl eval: error: cannot read checkpoint {tmp_path / 'junk.pt'}: ")
    assert err.count("\n") == 1


def test_value_error_inside_training_keeps_its_traceback(tiny_train, tmp_path, monkeypatch):
    """Only argument errors become one line; a ValueError from inside a training step is a bug and propagates."""
    def broken(self):
        raise ValueError("an internal bug")
    monkeypatch.setattr(PPOTrainer, "train_step", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        tiny_train("--out", tmp_path / "run", "--no-progress")


def test_help_of_eval_and_plot_has_descriptions_and_defaults(capsys):
    for cmd, expected in (("eval", ["fresh episodes to run (>= 1) (default: 1000)", "(default: 0)",
                                    "(default: auto)", "a checkpoint.pt written by memrl train"]),
                          ("plot", ["a run directory of memrl train (with its metrics.jsonl)"])):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for part in expected:
            assert part in text, (cmd, part)


def test_nothing_logged_is_said_plainly(tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--debug-nan-at-update", 1, "--no-progress") == 3
    out, err = capsys.readouterr()
    assert err.endswith("No checkpoint was written.\n") and "memrl train: error: training stopped: non-finite" in err
    done = out.splitlines()[-1]
    assert done.endswith(f"; checkpoint none; curves none ({run}/metrics.jsonl has no training rows to plot)")
    assert "Errno" not in out
