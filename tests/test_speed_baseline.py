"""The benchmark's baselines: the plain loop on the paper code's network trains the network grokcore trains; the
host its table names; and the history of its tables, with the figure drawn from it."""

import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed
import speed_history


def test_paper_module_computes_grokcores_function_from_the_same_weights():
    config = speed.nanda_config(task=speed.gc.AlgorithmicTask(op="x+y", p=13, train_fraction=0.3, op_token=False))
    model = speed.build_member(config, config.members()[0]).double()
    for p in model.parameters():  # biases start at zero; make them count
        p.data += 0.1 * torch.randn_like(p)
    paper = speed.ProgressMeasuresTransformer(model)
    tokens, _ = config.task.examples()
    logits = paper(tokens)
    assert logits.shape == (len(tokens), 3, 14)
    torch.testing.assert_close(logits[:, -1], model(tokens), rtol=1e-10, atol=1e-10)
    # the earlier positions attend only backwards: changing the last token leaves them alone
    changed = tokens.clone()
    changed[:, -1] = 0
    torch.testing.assert_close(paper(changed)[:, :2], logits[:, :2], rtol=0, atol=0)


def test_float64_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([1, 0])
    by_hand = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        by_hand += math.log(sum(math.exp(v) for v in row)) - row[t]
    loss = speed.float64_cross_entropy(logits, targets)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - by_hand / 2) < 1e-12


def test_host_cpu_names_the_first_model_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\n\nprocessor\t: 1\nmodel name\t: Other\n")
    assert speed.host_cpu(cpuinfo) == "Example CPU @ 2.00GHz"
    fallback = speed.platform.processor() or "unknown"  # no model line (some ARM hosts), or no file
    cpuinfo.write_text("processor\t: 0\n")
    assert speed.host_cpu(cpuinfo) == fallback
    assert speed.host_cpu(tmp_path / "missing") == fallback


def a_run(warm_s, plain_s, paper_s=None, bf16_s=None):
    """Case (a)'s seconds rows of one speed.csv, with a cold row and a graphs-only row that the
    figure must not take for the warm one."""
    case, metric = speed_history.CASE_A, "seconds to 99% val acc"
    rows = [
        (case, "grokcore", metric, 12.0, "5000 steps; compile cache cold"),
        (case, "grokcore", metric, warm_s, "4800 steps; compile cache warm; median of 3 runs: 1.1-1.3 s, 4700-4900 steps"),
        (case, "grokcore, no compile", metric, 2.4, "4700 steps; CUDA graphs only"),
        (case, "plain", metric, plain_s, "4000 steps; median of 3 runs: 19.5-20.5 s, 4000-4000 steps"),
        (case, "ratio", "speed-up (plain s / ours s)", plain_s / warm_s, "compile cache warm"),
        ("(b) Power x/y mod 97, batch 512", "plain", "steps/s", 250.0, ""),
    ]
    if paper_s is not None:
        rows.append((case, speed.PAPER, metric, paper_s, "5000 steps"))
    if bf16_s is not None:
        rows.append((case, "grokcore, bf16", metric, bf16_s, "5000 steps; compile cache warm, bf16 products"))
    table = pd.DataFrame(rows, columns=["case", "implementation", "metric", "value", "note"])
    return table.assign(device="NVIDIA H100 80GB HBM3", torch="2.11.0")


def test_the_history_keeps_every_run_with_when_it_was_recorded(tmp_path):
    """What speed.py --out does: the run as speed.csv, its rows added to the history, the figure."""
    folder = tmp_path / "appendix"
    first, second = a_run(1.2, 20.0), a_run(1.0, 15.0, paper_s=18.0)
    speed_history.record(first, folder, "2026-12-01T10:00Z")
    speed_history.record(second, folder, "2026-12-02T11:30Z")
    history = pd.read_csv(folder / "speed_history.csv")
    assert list(history.columns) == ["recorded", *second.columns]
    assert list(history["recorded"]) == ["2026-12-01T10:00Z"] * len(first) + ["2026-12-02T11:30Z"] * len(second)
    assert list(history["value"]) == list(first["value"]) + list(second["value"])
    assert list(pd.read_csv(folder / "speed.csv")["value"]) == list(second["value"])  # the latest run alone
    assert b"<svg" in (folder / "speed_by_host.svg").read_bytes()
    with pytest.raises(ValueError, match="recorded = 2026-12-02T11:30Z is already in"):
        speed_history.append(second, folder / "speed_history.csv", "2026-12-02T11:30Z")
    with pytest.raises(ValueError, match="recorded = '2 December' is not allowed: must be a UTC time to the minute"):
        speed_history.append(second, folder / "speed_history.csv", "2 December")
    assert len(pd.read_csv(folder / "speed_history.csv")) == len(history)  # refused before writing


def test_the_figures_points_are_the_plain_step_and_the_speed_up_of_each_run():
    history = pd.concat([
        a_run(1.2, 20.0).assign(recorded="2026-12-01T10:00Z"),
        a_run(1.0, 15.0, paper_s=18.0, bf16_s=0.8).assign(recorded="2026-12-02T11:30Z"),
    ])
    got = speed_history.points(history)
    got = {(r.recorded[:10], r.network, r.precision): (r.plain_ms_per_step, r.speedup, r.ours_ms_per_step) for r in got.itertuples()}
    # by hand: ms per step = seconds / steps * 1000; speed-up = plain seconds / grokcore's warm seconds
    expected = {
        ("2026-12-01", "grokcore's", "TF32"): (20.0 / 4000 * 1000, 20.0 / 1.2, 1.2 / 4800 * 1000),
        ("2026-12-02", "grokcore's", "TF32"): (15.0 / 4000 * 1000, 15.0 / 1.0, 1.0 / 4800 * 1000),
        ("2026-12-02", "grokcore's", "bf16"): (15.0 / 4000 * 1000, 15.0 / 0.8, 0.8 / 5000 * 1000),
        ("2026-12-02", "the paper code's", "TF32"): (18.0 / 5000 * 1000, 18.0 / 1.0, 1.0 / 4800 * 1000),
        ("2026-12-02", "the paper code's", "bf16"): (18.0 / 5000 * 1000, 18.0 / 0.8, 0.8 / 5000 * 1000),
    }
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-12), key


def test_a_row_of_a_without_its_steps_is_named():
    history = a_run(1.2, 20.0).assign(recorded="2026-12-01T10:00Z")
    history.loc[history["implementation"] == "plain", "note"] = "median of 3 runs"
    with pytest.raises(ValueError, match="the 'plain' row of case \\(a\\) recorded 2026-12-01T10:00Z should start its note"):
        speed_history.points(history)


@pytest.mark.parametrize("change, message", [
    ("twice", "has 2 rows 'grokcore' noting 'compile cache warm' in case \\(a\\), not one"),
    ("no warm row", "has 0 rows 'grokcore' noting 'compile cache warm' in case \\(a\\), not one"),
    ("no plain row", "has 0 rows 'plain' in case \\(a\\), not one"),
])
def test_a_run_whose_rows_are_ambiguous_or_missing_is_refused_not_dropped(change, message):
    """Two runs stamped alike, or a row missing, would silently take a point off the figure."""
    run = a_run(1.2, 20.0).assign(recorded="2026-12-01T10:00Z")
    if change == "twice":
        run = pd.concat([run, run])
    elif change == "no warm row":
        run = run[~run["note"].str.contains("compile cache warm") | (run["implementation"] != "grokcore")]
    else:
        run = run[run["implementation"] != "plain"]
    with pytest.raises(ValueError, match="history: the run recorded 2026-12-01T10:00Z " + message):
        speed_history.points(run)


def test_the_figure_changes_only_with_the_history(tmp_path):
    history = a_run(1.0, 15.0, paper_s=18.0, bf16_s=0.8).assign(recorded="2026-12-02T11:30Z")
    speed_history.plot(history, tmp_path / "a.svg")
    speed_history.plot(history, tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()
    history.loc[history["implementation"] == "plain", "value"] = 16.0
    speed_history.plot(history, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_bytes() != (tmp_path / "a.svg").read_bytes()


def test_the_figure_refuses_a_file_it_cannot_draw_without_a_date(tmp_path):
    history = a_run(1.0, 15.0).assign(recorded="2026-12-02T11:30Z")
    with pytest.raises(ValueError, match="path = .*figure.jpg is not allowed: the figure's file must end in .svg, .pdf, .png"):
        speed_history.plot(history, tmp_path / "figure.jpg")
    assert not (tmp_path / "figure.jpg").exists()


def test_redrawing_without_a_history_says_how_to_start_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["speed_history.py", str(tmp_path)])
    with pytest.raises(SystemExit):
        speed_history.main()
    assert f"folder = {tmp_path} has no speed_history.csv" in capsys.readouterr().err


def test_the_precision_comparison_is_per_seed_over_the_seeds_that_reached_99_in_both():
    import precision_seeds

    steps = pd.DataFrame({"tf32": [4000.0, 6000.0, 5000.0, 9000.0, 7000.0], "bf16": [4500.0, 5800.0, 5000.0, None, 8400.0]})
    got = precision_seeds.compare(steps, "tf32", "bf16")
    differences = [500.0, -200.0, 0.0, 1400.0]  # by hand, seed 3 left out
    mean = sum(differences) / 4
    sd = (sum((d - mean) ** 2 for d in differences) / 3) ** 0.5
    assert (got["seeds"], got["later"], got["earlier"], got["same"]) == (4, 2, 1, 1)
    assert got["mean_difference"] == pytest.approx(mean)
    assert got["standard_error"] == pytest.approx(sd / 2)
    assert got["median_ratio"] == pytest.approx((1.0 + 4500 / 4000) / 2)  # of 0.967, 1.0, 1.125, 1.2
    assert got["missed"] == {"tf32": 0, "bf16": 1}
    assert got["sign_test_p"] == 1.0  # 2 against 1: P(at most 1 of 3) = 4/8, doubled
    none = precision_seeds.compare(steps.assign(bf16=None), "tf32", "bf16")  # no seed reached 99% in bf16
    assert none["seeds"] == 0 and none["missed"] == {"tf32": 0, "bf16": 5} and math.isnan(none["median_ratio"])
    assert math.isnan(none["sign_test_p"])


def test_the_sign_test_by_hand():
    import precision_seeds

    assert precision_seeds.sign_test(5, 0) == pytest.approx(2 / 32)  # all five later: 2 x (1/2)^5
    assert precision_seeds.sign_test(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # 0 or 1 of 6, either side
    assert precision_seeds.sign_test(3, 3) == 1.0


def a_table(folder, first, second, rows):
    frame = pd.DataFrame(rows, columns=[first, second]).rename_axis("member")
    frame.to_csv(folder / f"precision_seeds_{first}_{second}.csv")


def test_the_precision_figure_has_a_panel_per_table_and_no_date(tmp_path):
    import precision_seeds

    with pytest.raises(ValueError, match=re.escape(f"folder = {tmp_path} has no precision_seeds_<first>_<second>.csv")):
        precision_seeds.plot(tmp_path)
    a_table(tmp_path, "tf32", "bf16", [(4000, 4500), (6000, None), (5000, 5200), (None, 5100), (None, None)])
    a_table(tmp_path, "fp32", "tf32", [(4000, 3900), (6000, 6100)])
    assert [(a, b, len(t)) for a, b, t in precision_seeds.tables(tmp_path)] == [("fp32", "tf32", 2), ("tf32", "bf16", 5)]
    svg = precision_seeds.plot(tmp_path).read_text()
    assert svg.count("steps to 99%, TF32") == 2  # an axis of each panel
    assert "later for 2," in svg and "a seed (2)" in svg
    for missed in ("never 99% in bf16 (1)", "never 99% in TF32 (1)", "never 99% in either (1)"):
        assert missed in svg
    assert "<dc:date>" not in svg
    first = (tmp_path / precision_seeds.FIGURE).read_bytes()
    precision_seeds.plot(tmp_path)
    assert (tmp_path / precision_seeds.FIGURE).read_bytes() == first  # the file changes only with the tables
    a_table(tmp_path, "fp32", "tf32", [(4000, 3900), (6000, 6500)])
    precision_seeds.plot(tmp_path)
    assert (tmp_path / precision_seeds.FIGURE).read_bytes() != first
    with pytest.raises(ValueError, match="path = .*figure.txt is not allowed: the figure's file must end in .svg"):
        precision_seeds.plot(tmp_path, tmp_path / "figure.txt")
    a_table(tmp_path, "fp32", "tf32", [(None, None), (None, None)])  # a run too short for any seed: drawn, not refused
    assert "never 99% in either (2)" in precision_seeds.plot(tmp_path).read_text()


@pytest.mark.parametrize("name, text, refusal", [
    ("precision_seeds_fp32_tf32_old.csv", "member,fp32,tf32\n0,1,2\n", "holds precision_seeds_fp32_tf32_old.csv, which is not a table"),
    ("precision_seeds_fp16_tf32.csv", "member,fp16,tf32\n0,1,2\n", "holds precision_seeds_fp16_tf32.csv, which is not a table"),
    ("precision_seeds_tf32_tf32.csv", "member,tf32\n0,1\n", "holds precision_seeds_tf32_tf32.csv, which is not a table"),
    ("precision_seeds_fp32_tf32.csv", "member,fp32,bf16\n0,1,2\n", "has columns ['member', 'fp32', 'bf16'], not member, fp32, tf32"),
])
def test_a_folder_with_a_file_that_is_not_a_table_is_refused_naming_it(tmp_path, name, text, refusal):
    import precision_seeds

    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=re.escape(refusal)):
        precision_seeds.tables(tmp_path)


def test_redraw_and_out_are_one_or_the_other(tmp_path, monkeypatch, capsys):
    import precision_seeds

    monkeypatch.setattr(sys, "argv", ["precision_seeds.py", "--redraw", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        precision_seeds.main()
    assert "not allowed with argument" in capsys.readouterr().err
    (tmp_path / "precision_seeds_x_y.csv").write_text("member,x,y\n")
    monkeypatch.setattr(sys, "argv", ["precision_seeds.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # refused before any training
        precision_seeds.main()
    assert "holds precision_seeds_x_y.csv, which is not a table" in capsys.readouterr().err


def test_the_appendix_states_what_its_per_seed_tables_hold():
    """The seed studies' numbers in the speed log come from the tables committed beside it."""
    import precision_seeds

    appendix = Path(__file__).resolve().parents[1] / "book" / "appendix"
    log = " ".join((appendix / "speed_log.md").read_text().split())

    bf16 = pd.read_csv(appendix / "precision_seeds_tf32_bf16.csv", index_col="member")
    assert len(bf16) == 64
    got = precision_seeds.compare(bf16, "tf32", "bf16")
    assert (got["seeds"], got["later"], got["earlier"], got["same"], got["missed"]) == (63, 54, 7, 2, {"tf32": 0, "bf16": 1})
    assert (bf16["tf32"].median(), bf16["bf16"].median()) == (6800, 7700)
    assert (round(got["mean_difference"]), round(got["standard_error"]), round(got["median_ratio"], 3)) == (1020, 124, 1.142)
    assert f"{got['sign_test_p']:.0e}" == "4e-10"
    assert (round(bf16["bf16"].mean()), round(bf16["tf32"].mean())) == (8056, 7156)
    for stated in ("later for 54 of the 63 seeds", "1,020 steps more on average (standard error 124)", "$4 \\times 10^{-10}$",
                   "a median of 7,700 steps against 6,800 in TF32 (means 8,056", "a median of 14% more"):
        assert stated in log

    fp32 = pd.read_csv(appendix / "precision_seeds_fp32_tf32.csv", index_col="member")
    assert len(fp32) == 64
    got = precision_seeds.compare(fp32, "fp32", "tf32")
    assert (got["seeds"], got["later"], got["earlier"], got["same"], got["missed"]) == (64, 28, 33, 3, {"fp32": 0, "tf32": 0})
    assert (fp32["fp32"].median(), fp32["tf32"].median()) == (6950, 6850)
    assert (round(got["mean_difference"]), round(got["standard_error"]), round(got["median_ratio"], 3)) == (-159, 92, 0.994)
    assert round(got["sign_test_p"], 2) == 0.61
    assert round((fp32["tf32"] - fp32["fp32"]).std()) == 733
    assert round((fp32["tf32"] - bf16["tf32"]).std()) == 392  # the same seeds' TF32 runs on two loans
    assert (round(fp32["fp32"].mean()), round(fp32["tf32"].mean())) == (7305, 7147)
    assert round((fp32["tf32"] - bf16["tf32"]).mean()) == -9
    low, high = got["mean_difference"] - 1.96 * got["standard_error"], got["mean_difference"] + 1.96 * got["standard_error"]
    assert (round(low, -1), round(high, -1)) == (-340, 20)
    assert -low / fp32["tf32"].median() < 0.05 and high / fp32["tf32"].median() < 0.0035  # "about 0.3%"
    for stated in ("later for 28 seeds, earlier for 33 and at the same evaluation for 3", "p = 0.61",
                   "159 steps fewer on average (standard error 92), a median ratio of 0.994",
                   "a median of 6,950 steps in float32 and 6,850 in TF32 (means 7,305 and 7,147)",
                   "340 steps fewer to 20 more", "standard deviation of 733 steps", "one of 392 steps (and a mean of -9)"):
        assert stated in log
