"""What `memrl train` prints: one line per evaluation and curriculum stage (no carriage returns when not on a
terminal), a tqdm counter without a total on a terminal, and a done line that says what was evaluated."""
import io
import json

import pytest
import torch

from memrl.config import Config
from memrl.ppo import PPOTrainer
from memrl.progress import Progress

CURRICULUM = ["--horizon", "8", "--curriculum-start", "3", "--curriculum-factor", "2", "--curriculum-success", "0",
              "--eval-interval", "1"]  # 3 -> 6 -> 8, one stage per update, an evaluation after every update


def _train_rows(run):
    return [r for r in map(json.loads, open(run / "metrics.jsonl")) if r["kind"] == "train"]


@pytest.mark.parametrize("flags", [[], ["--no-progress"]])
def test_one_line_per_evaluation_and_stage_without_a_terminal(tiny_train, tmp_path, capsys, flags):
    run = tmp_path / "run"
    assert tiny_train("--out", run, *CURRICULUM, "--total-steps", 300, "--target-success", 1.1, *flags) == 0
    out, err = capsys.readouterr()  # captured: stderr is not a terminal, so no bar either way
    assert "\r" not in out + err and err == ""
    rows = _train_rows(run)
    assert [r["train_horizon"] for r in rows] == [3, 6, 8, 8]  # 48 + 96 + 128 + 128 env steps >= 300
    expected = []
    for r, horizon_after in zip(rows, [6, 8, 8, 8]):
        head = f"update {r['update']}, {r['env_steps']} env steps, "
        what = "curriculum stage" if r["train_horizon"] < 8 else "not solved"
        expected.append((head, f": eval success {r['eval_success']:.3f} on 20 fresh episodes at horizon "
                               f"{r['train_horizon']} ({what}; target 1.1 at horizon 8)"))
        if horizon_after != r["train_horizon"]:
            expected.append((head, f": rollout success {r['success']:.3f} at horizon {r['train_horizon']} -> "
                                   f"curriculum horizon {horizon_after} of 8"))
    lines = out.splitlines()[1:-1]  # between the start line and the done line
    assert len(lines) == len(expected) == 6
    for line, (head, tail) in zip(lines, expected):
        assert line.startswith(head) and line.endswith(tail), (line, head, tail)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_counter_shows_the_stop_condition_not_total_steps():
    cfg = Config(horizon=8, curriculum_start=3, curriculum_factor=2.0, curriculum_success=0.0, eval_interval=1,
                 num_envs=16, num_minibatches=2, controller="gru", d_model=16, eval_episodes=20, device="cpu",
                 total_steps=20_000_000)
    trainer = PPOTrainer(cfg)
    screen = _Terminal()
    progress = Progress(trainer, bar=True, stream=screen)
    assert progress.bar is not None and progress.bar.total is None  # a counter: no total, so no ETA
    before = trainer.train_horizon
    stats = trainer.train_step()
    progress.update(trainer, stats, before)
    progress.bar.refresh()
    text = screen.getvalue().split("\r")[-1]
    assert text.startswith("H 6/8: 48.0step [") and f"eval={stats['eval_success']:.3f}@3" in text
    assert "target=0.99@8" in text and "20.0M" not in text and "<" not in text  # no total, no remaining time
    progress.close()
    assert Progress(trainer, bar=False, stream=screen).bar is None  # --no-progress


def test_done_line_says_when_the_curriculum_stopped_before_the_full_horizon(tiny_train, tmp_path, capsys):
    run = tmp_path / "a"
    assert tiny_train("--out", run, "--horizon", 8, "--curriculum-start", 3, "--num-envs", 64, "--total-steps", 1,
                      "--no-progress") == 0
    h = torch.load(run / "checkpoint.pt", weights_only=False)["counters"]["train_horizon"]
    done = capsys.readouterr().out.splitlines()[-1]
    assert f", not evaluated (the curriculum stopped at horizon {h} of 8), solved=False;" in done
    run = tmp_path / "b"
    assert tiny_train("--out", run, "--horizon", 8, "--curriculum-start", 3, "--num-envs", 64, "--total-steps", 1,
                      "--eval-interval", 1, "--no-progress") == 0
    counters = torch.load(run / "checkpoint.pt", weights_only=False)["counters"]
    ev, h = counters["last_eval"], counters["train_horizon"]
    done = capsys.readouterr().out.splitlines()[-1]
    assert ev["horizon"] == 3 and ev["episodes"] == 20
    assert (f", not evaluated at horizon 8 (the curriculum stopped at horizon {h} of 8; last eval success "
            f"{ev['success_rate']:.3f} on 20 fresh episodes at horizon 3), solved=False;") in done
