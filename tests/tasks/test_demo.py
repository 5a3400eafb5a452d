"""medmae demo: plan -> MAE -> sweep with scratch and MONAI's BasicUNet, and the table it prints."""

import json

from helpers import flat, invoke


def test_the_demo_plans_pretrains_and_compares_three_arms_paired_over_cases(tmp_path):
    run = tmp_path / "demo"
    result = invoke(["demo", "--run-dir", str(run), "--max-steps", "2", "--budget", "10s"])
    assert result.exit_code == 0, result.output
    s = json.loads((run / "demo_summary.json").read_text())
    assert s["network"].startswith("ResEnc") and (run / "plan.yaml").is_file()
    plan_text = (run / "plan.yaml").read_text()
    assert s["pretrain_steps"] == 2 and (run / "pretrain" / "export" / "encoder.safetensors").is_file()
    assert s["pretrain_budget_s"] == 20, "the plan gives the MAE twice a sweep cell's 10 s"
    rows = s["comparison"]
    assert [(r["fraction"], r["arm"]) for r in rows] == [
        (f, arm) for f in (0.05, 0.25) for arm in ("scratch", "MAE", "MONAI BasicUNet")]
    for r in rows:
        assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0
        d = r["vs_scratch"]
        if r["arm"] == "scratch":
            assert d is None
        else:
            assert d["ci_low"] <= d["mean_diff"] <= d["ci_high"] and 0 <= d["wins"] <= d["n_cases"]
    assert len({r["vs_scratch"]["n_cases"] for r in rows if r["vs_scratch"]}) == 1  # the same held-out images
    report = (run / "sweep" / "report.md").read_text()
    assert "## Paired over test cases" in report and "baseline-basicunet" in report
    text = flat(result.output)
    assert "vsscratch:thedifferencepairedovertheheld-outimages" in text and "MONAIBasicUNet" in text
    assert "2ina20sbudget" in text and "10spersweepcell" in text
    again = invoke(["demo", "--run-dir", str(run), "--max-steps", "2", "--budget", "10s"])  # resumes, same plan
    assert again.exit_code == 0, again.output
    assert (run / "plan.yaml").read_text() == plan_text
    other = invoke(["demo", "--run-dir", str(run), "--budget", "2m"])
    assert other.exit_code == 2 and "plannedfor10sperrun,not--budget2m" in flat(other.output), other.output
