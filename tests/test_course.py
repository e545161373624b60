"""`make course` end to end, in its smoke setting: build, train, evaluate, show three holes."""
import json

from mamba_nb.course import run_course


def test_course_builds_trains_evaluates_and_shows_examples(tmp_path, capsys):
    checkpoint = run_course(smoke=True, root=str(tmp_path))
    out = capsys.readouterr().out
    assert checkpoint == tmp_path / "runs" / "smoke" / "latest" and (checkpoint / "config.json").is_file()
    assert "validation" in out and "documents" in out  # the dataset summary
    assert "val_loss" in out  # the evaluation table
    assert "HumanEval single-line pass@1" in out
    report = json.loads((checkpoint / "eval.json").read_text())
    assert report["line"]["tasks"] == 6 and report["humaneval"]["tasks"] == 4
    assert "suffix gain spm, held-out lines" in out and "suffix gain spm, requests lines" in out
    helped = [ex for ex in report["examples"] if ex["suffix_helped"] > 0]
    rest = [ex for ex in report["examples"] if ex["suffix_helped"] <= 0]
    assert f"beat prefix only on {len(helped)} of 6 held-out holes" in out
    assert out.count("\n--- validation/") == min(2, len(helped)) + min(2, len(rest))
    for ex in sorted(helped, key=lambda ex: -ex["suffix_helped"])[:2] + rest[:2]:
        assert f"truth        | {ex['truth']}" in out

    assert "suffix gain as training went on" in out and out.count(" M tokens (step ") >= 2
    # a second run reuses the dataset and resumes the finished run instead of starting over
    run_course(smoke=True, root=str(tmp_path))
    again = capsys.readouterr().out
    assert "resuming" in again and "already complete" in again
