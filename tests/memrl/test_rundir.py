"""No run overwrites another's data: a new directory per run without --out, --out refused where a run lives
(files unchanged to the byte), --overwrite clears only memrl's files, --resume appends."""
import json
import os

from memrl.rundir import clear_run, new_run_dir


def _rows(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def _updates(run):
    return [r["update"] for r in _rows(run) if r["kind"] == "train"]


def _snapshot(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_without_out_every_run_gets_a_new_directory(tiny_train, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/DelayedCue-6-gru-7")  # numbering continues after the largest N
    (tmp_path / "runs" / "DelayedCue-6-gru-x").mkdir()  # not a number: ignored
    for n in (8, 9):
        assert tiny_train("--total-steps", 1, "--no-progress") == 0
        run = os.path.join("runs", f"DelayedCue-6-gru-{n}")
        assert f"run dir {run}\n" in capsys.readouterr().out
        assert _updates(run) == [1]
        with open(os.path.join(run, "config.json")) as f:
            assert json.load(f)["out"] == run
    assert sorted(os.listdir("runs")) == ["DelayedCue-6-gru-7", "DelayedCue-6-gru-8", "DelayedCue-6-gru-9",
                                          "DelayedCue-6-gru-x"]
    assert os.listdir("runs/DelayedCue-6-gru-7") == []


def test_out_holding_a_run_is_refused_and_left_unchanged(tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--total-steps", 1, "--no-progress") == 0
    before = _snapshot(run)
    assert {"checkpoint.pt", "metrics.jsonl", "config.json", "curves.png"} <= set(before)
    capsys.readouterr()
    assert tiny_train("--out", run, "--total-steps", 200, "--no-progress") == 2
    err = capsys.readouterr().err
    assert err == (f"memrl train: error: --out {run} already holds a run (checkpoint.pt, metrics.jsonl, config.json); "
                   f"continue it with --resume {run}, replace it with --overwrite, or leave out --out for a new "
                   f"directory\n")
    assert _snapshot(run) == before
    (run / "checkpoint.pt").unlink()  # any one of the three marks a run
    (run / "config.json").unlink()
    before = _snapshot(run)
    assert tiny_train("--out", run, "--no-progress") == 2
    assert "(metrics.jsonl)" in capsys.readouterr().err and _snapshot(run) == before


def test_overwrite_deletes_only_memrl_files(tiny_train, tmp_path):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--total-steps", 200, "--no-progress") == 0
    assert _updates(run) == [1, 2, 3]
    (run / "notes.txt").write_text("mine")
    (run / "tb").mkdir(exist_ok=True)
    (run / "tb" / "events.out.tfevents.1.host.1.0").write_text("old events")
    (run / "tb" / "keep.txt").write_text("mine too")
    assert tiny_train("--out", run, "--total-steps", 1, "--no-progress", "--overwrite") == 0
    assert _updates(run) == [1]  # the old rows are gone, not appended to
    assert [r["kind"] for r in _rows(run)] == ["train", "session"]
    assert (run / "notes.txt").read_text() == "mine" and (run / "tb" / "keep.txt").read_text() == "mine too"
    assert not (run / "tb" / "events.out.tfevents.1.host.1.0").exists()


def main_resume(run, *flags):
    from memrl.cli import main
    return main(["train", "--resume", str(run), "--no-progress", *flags])


def test_resume_appends_and_refuses_overwrite(tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert tiny_train("--out", run, "--total-steps", 1, "--no-progress") == 0
    assert main_resume(run, "--total-steps", "200") == 0
    assert _updates(run) == [1, 2, 3]
    before = _snapshot(run)
    capsys.readouterr()
    assert main_resume(run, "--overwrite") == 2
    assert "--overwrite would delete the run that --resume" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_clear_run_and_new_run_dir(tmp_path):
    for name in ("checkpoint.pt", "checkpoint.pt.tmp", "metrics.jsonl", "config.json", "curves.png", "other.pt"):
        (tmp_path / name).write_text("x")
    gone = clear_run(str(tmp_path))
    assert sorted(os.path.basename(p) for p in gone) == ["checkpoint.pt", "checkpoint.pt.tmp", "config.json",
                                                         "curves.png", "metrics.jsonl"]
    assert os.listdir(tmp_path) == ["other.pt"]
    parent = str(tmp_path / "runs")
    assert [new_run_dir("A-2-gru", parent) for _ in range(3)] == [os.path.join(parent, f"A-2-gru-{n}")
                                                                  for n in (1, 2, 3)]
    assert new_run_dir("A-2", parent) == os.path.join(parent, "A-2-1")  # "A-2-gru-N" is not "A-2-N"
