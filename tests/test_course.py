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
    # ... beside its controls: the content gain and the best prompt's middle loss, each with its interval
    assert "content gain spm, requests lines" in out and "middle loss, best prompt, requests lines" in out
    # the examples' left-to-right infills are code a learner can compare with, never FIM sentinels
    left_to_right = [line for line in out.split("\n") if line.startswith("  prefix only  | ")]
    assert left_to_right and not any("<fim_" in line for line in left_to_right)
    helped = [ex for ex in report["examples"] if ex["suffix_helped"] > 0]
    rest = [ex for ex in report["examples"] if ex["suffix_helped"] <= 0]
    assert f"beat prefix only on {len(helped)} of 6 held-out holes" in out
    assert out.count("\n--- validation/") == min(2, len(helped)) + min(2, len(rest))
    for ex in sorted(helped, key=lambda ex: -ex["suffix_helped"])[:2] + rest[:2]:
        assert f"truth        | {ex['truth']}" in out

    assert "suffix gain as training went on" in out and out.count(" M tokens (step ") >= 2
    assert out.count("], content ") == out.count(" M tokens (step ")
    # the training curves: every validation logged the gain's controls with their intervals
    evals = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals
    for r in evals:
        lo, hi = r["val_content_gain_interval"]
        assert lo <= r["val_content_gain"] <= hi
        lo, hi = r["val_best_middle_loss_interval"]
        assert lo <= r["val_best_middle_loss"] <= hi and r["val_best_prompt"] in ("lm", "spm")
    # a second run reuses the dataset and resumes the finished run instead of starting over
    run_course(smoke=True, root=str(tmp_path))
    again = capsys.readouterr().out
    assert "resuming" in again and "already complete" in again
