"""curves.png: the title's training time is the done line's, and the legend covers no curve."""
import json
import re

from memrl.plot import figure, training_time


def test_title_time_is_the_done_line_time_and_the_legend_is_off_the_axes(tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--horizon", 8, "--curriculum-start", 3, "--curriculum-factor", 2,
                      "--curriculum-success", 0, "--eval-interval", 1, "--total-steps", 300, "--no-progress") == 0
    done = capsys.readouterr().out.splitlines()[-1]
    seconds = re.search(r"\d+ in ([\d.]+) s this session", done).group(1)
    fig = figure(str(run))
    assert fig._suptitle.get_text().endswith(f"M steps, {seconds} s training wall time")
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "rollout success (sampled actions)", "eval (greedy, fresh episodes)", "eval at a curriculum horizon",
        "training horizon (curriculum, right axis)"]
    for ax in fig.axes:  # the four panels and the horizon's twin axis
        assert not legend.overlaps(ax.get_tightbbox()), ax.get_ylabel()


def test_training_time_sums_the_sessions(tiny_train, tmp_path):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--total-steps", 1, "--no-progress") == 0
    from memrl.cli import main
    assert main(["train", "--resume", str(run), "--total-steps", "200", "--no-progress"]) == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    walls = [r["wall"] for r in rows if r["kind"] == "session"]
    assert len(walls) == 2 and training_time(rows) == f"{sum(walls):.1f} s training wall time in 2 sessions"
    assert training_time([r for r in rows if r["kind"] == "train"]) == "training wall time not logged"
