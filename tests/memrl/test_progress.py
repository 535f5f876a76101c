"""What `memrl train` prints: a done line that says what was evaluated."""
import torch


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
