"""The softmax study (benchmarks/softmax_seeds.py): its summary, and the chapters' prose against its committed tables."""

import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import softmax_seeds


def prose(notebook: str) -> str:
    """A notebook's markdown, its whitespace collapsed."""
    cells = json.loads((ROOT / "book" / notebook).read_text())["cells"]
    return " ".join(" ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown").split())


def test_the_summary_counts_spikes_and_compares_seed_by_seed():
    table = pd.DataFrame({
        "seed": [0, 1, 2, 0, 1, 2],
        "softmax": ["fp32"] * 3 + ["fp64"] * 3,
        "spikes": [2, 1, 0, 0, 1, 1],
        "min_train_loss": [1e-8, 2e-8, 3e-8, 1e-10, 2e-10, 3e-10],
        "val_99": [100.0, None, 300.0, 200.0, None, None],
    })
    lines = softmax_seeds.summary(table).splitlines()
    assert lines[0] == ("  fp32: 2 of 3 seeds spiked, 3 spikes; lowest training loss a median 2.0e-08; "
                        "99% validation accuracy for 2, at a median step of 200")
    assert lines[1].startswith("  fp64: 2 of 3 seeds spiked, 2 spikes; lowest training loss a median 2.0e-10; "
                               "99% validation accuracy for 1, at a median step of 200")
    # seed 0: fewer in fp64; seed 1: as many; seed 2: more. One against one: p = 1.
    assert lines[2] == "  per seed, fp64 had fewer spikes for 1, more for 1 (two-sided sign test p = 1)"
    # Tables with the last layer's norm (those written since it was recorded) give its median too.
    table["final_norm"] = [10.0, 30.0, 20.0, 5.0, 6.0, 7.5]
    lines = softmax_seeds.summary(table).splitlines()
    assert lines[0].endswith("; last-layer norm at the end a median 20.0") and lines[1].endswith(" a median 6.0")


def by_softmax(table: str):
    """A committed table of the study (beside the Thilak chapter), as one frame per softmax indexed by seed."""
    frame = pd.read_csv(ROOT / "book/thilak2022" / table)
    return (frame[frame.softmax == s].set_index("seed") for s in ("fp32", "fp64"))


def assert_stated(notebook: str, *sentences: str) -> None:
    text = prose(notebook)
    for sentence in sentences:
        assert sentence in text, sentence


def test_the_thilak_chapter_states_what_the_8_seed_table_holds():
    f32, f64 = by_softmax("softmax_seeds_thilak.csv")
    assert len(f32) == len(f64) == 8
    assert ((f32.spikes > 0).sum(), f32.spikes.sum(), set(f32.spikes)) == (8, 20, {2, 3})
    assert ((f64.spikes > 0).sum(), f64.spikes.sum(), set(f64.spikes)) == (5, 5, {0, 1})
    assert (f64.spikes < f32.spikes).all()
    assert f"{softmax_seeds.sign_test(int((f64.spikes < f32.spikes).sum()), int((f64.spikes > f32.spikes).sum())):.3f}" == "0.008"
    assert (f"{f32.min_train_loss.median():.1e}", f"{f64.min_train_loss.median():.1e}") == ("1.6e-08", "5.1e-10")
    sooner = f64.first_spike.notna() & (f64.first_spike < f32.first_spike)
    assert sooner.sum() == 4 and (f64.first_spike[7], f32.first_spike[7]) == (1340, 2540)
    assert_stated(
        "thilak2022/slingshot.ipynb",
        ("every seed spiked in float32, 20 spikes in all (2 or 3 a seed); in float64 five seeds spiked once each and "
         "three never"),
        "a split this uneven would come up with probability 0.008: a two-sided sign test",
        "a median of 1.6e-8 in float32 against 5.1e-10 in float64",
        "four of the five float64 spikes came sooner than that seed's first in float32 (at step 1,340 against 2,540, for one)",
    )


def test_the_thilak_chapter_states_what_the_8_seed_trace_holds():
    """The table's --trace columns: Adam's step along the part of the last layer common to every
    output, while the training loss is below 1e-6, in each softmax."""
    f32, f64 = by_softmax("softmax_seeds_thilak.csv")

    def span(values, fmt):  # as the prose writes them: 6.8e-8, not 6.8e-08
        return " to ".join(f"{v:{fmt}}".replace("e-0", "e-") for v in (values.min(), values.max()))

    assert (f64.tiny_loss_gradient_ratio < 1e-6).all() and (f32.tiny_loss_gradient_ratio > 0.1).all()
    assert (f32.tiny_loss_step_common_max > 0.1).all()
    ratio = f32.tiny_loss_step_common_median / f64.tiny_loss_step_common_median
    assert f"{ratio.min():.0f}" == "99" and ratio.min() >= 98
    assert_stated(
        "thilak2022/slingshot.ipynb",
        f"float32's gradient had a common part of a median {span(f32.tiny_loss_gradient_ratio, '.2f')} of the rest",
        f"Adam's step along it reached {span(f32.tiny_loss_step_common_max, '.2f')} of a full step "
        f"(medians {f32.tiny_loss_step_common_median.min():.4f} to {f32.tiny_loss_step_common_median.max():.3f})",
        f"in float64 the gradient's common part was {span(f64.tiny_loss_gradient_ratio, '.1e')} of the rest, and the "
        f"step's reached {f64.tiny_loss_step_common_max.min():.4f} to {f64.tiny_loss_step_common_max.max():.3f} "
        f"(medians {span(f64.tiny_loss_step_common_median, '.1e')})",
        "For every seed float32's median step along that part was at least 98 times float64's.",
    )


def test_the_thilak_chapter_states_what_the_40000_step_table_holds():
    f32, f64 = by_softmax("softmax_seeds_thilak_40000steps.csv")
    assert (list(f32.spikes), list(f64.spikes)) == ([4, 9], [0, 0])
    assert [f"{n:.0f}" for n in f32.final_norm] == ["646", "519"] and [f"{n:.1f}" for n in f64.final_norm] == ["16.1", "16.0"]
    assert [f"{n:.0f}" for n in (*f32.final_common, *f32.final_rest)] == ["645", "518", "31", "30"]
    assert [f"{n:.1f}" for n in f64.final_common] == ["1.1", "0.8"]
    assert f"{f64.min_train_loss.max():.1e}" == "3.1e-11" and f"{f64.min_train_loss.min():.1e}" == "3.1e-11"
    accs = pd.concat([f32.best_val_acc, f64.best_val_acc])
    assert (f"{accs.min():.1%}", f"{accs.max():.1%}") == ("5.2%", "6.7%")
    assert f32.val_99.isna().all() and f64.val_99.isna().all()
    assert_stated(
        "thilak2022/slingshot.ipynb",
        "In float32 the seeds spiked 4 and 9 times, and their last-layer norms ended at 646 and 519",
        "almost all of it in the part common to every output (645 and 518; the rest 31 and 30)",
        "In float64 neither spiked, the training loss fell to 3.1e-11, and the norms ended at 16.1 and 16.0 (the common part 1.1 and 0.8)",
        "(best validation accuracy 5.2% to 6.7%; chance is 3.2%)",
    )


def test_the_thilak_chapter_states_what_the_64_seed_gpu_table_holds():
    f32, f64 = by_softmax("gpu/softmax_seeds_thilak.csv")
    assert len(f32) == len(f64) == 64 and (f64.spikes < f32.spikes).all()
    assert (f32.spikes.sum(), set(f32.spikes), (f64.spikes == 1).sum(), (f64.spikes == 0).sum()) == (164, {2, 3}, 21, 43)
    assert f"{softmax_seeds.sign_test(64, 0):.2g}" == "1.1e-19"
    assert (f64.first_spike.notna() & (f64.first_spike < f32.first_spike)).sum() == 13
    assert (f"{f32.min_train_loss.median():.1e}", f"{f64.min_train_loss.median():.1e}") == ("1.4e-08", "4.4e-10")
    assert_stated(
        "thilak2022/slingshot.ipynb",
        "In float32 every seed spiked, 164 spikes in all (2 or 3 a seed); in float64 21 seeds spiked once and 43 never",
        "(two-sided sign test p = 1.1e-19), and 13 of the 21 float64 spikes came sooner",
        "a median of 1.4e-8 in float32 against 4.4e-10 in float64",
    )


def test_the_nanda_chapter_states_what_the_8_seed_table_holds():
    f32, f64 = by_softmax("softmax_seeds_nanda.csv")
    assert len(f32) == len(f64) == 8
    assert (f32.spikes == 4).all() and (f64.spikes == 0).all()
    assert (f32.val_99.median(), f64.val_99.median()) == (2720, 2240)
    both = f32.val_99.notna() & f64.val_99.notna()
    assert ((f64.val_99 < f32.val_99)[both].sum(), (f64.val_99 > f32.val_99)[both].sum(), (~both).sum()) == (5, 2, 1)
    assert f32.val_99.isna().equals(f64.val_99.isna())
    assert_stated(
        "nanda2023/progress_measures.ipynb",
        ("every seed spiked 4 times in float32 and never in float64, while the steps to 99% validation accuracy "
         "moved both ways (a median of 2,720 in float32 and 2,240 in float64; sooner for 5 seeds, later for 2, "
         "never within 6,000 steps for one in either)"),
    )


def test_the_nanda_chapter_states_what_the_64_seed_gpu_table_holds():
    f32, f64 = by_softmax("gpu/softmax_seeds_nanda.csv")
    assert len(f32) == len(f64) == 64
    assert (f32.spikes.sum(), (f32.spikes == 4).sum(), (f32.spikes == 3).sum(), f64.spikes.sum()) == (255, 63, 1, 0)
    assert (f32.val_99.notna().sum(), f64.val_99.notna().sum(), f32.val_99.median(), f64.val_99.median()) == (51, 52, 2340, 2030)
    both = f32.val_99.notna() & f64.val_99.notna()
    sooner, later, same = ((f64.val_99 < f32.val_99)[both].sum(), (f64.val_99 > f32.val_99)[both].sum(), (f64.val_99 == f32.val_99)[both].sum())
    assert (both.sum(), sooner, later, same) == (49, 31, 14, 4)
    assert_stated(
        "nanda2023/progress_measures.ipynb",
        ("255 spikes in float32 (63 seeds 4 times, one 3 times), none in float64; 99% validation accuracy within "
         "6,000 steps for 51 seeds in float32 and 52 in float64, at medians of 2,340 and 2,030 steps (of the 49 seeds "
         "that got there in both, sooner in float64 for 31, later for 14, at the same step for 4)"),
    )
