"""Liu et al. 2022 (arXiv 2205.10343), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import pytest

import grokcore as gc
from grokcore.measures.representation import classify_phases, rqi

pytestmark = pytest.mark.science


def test_liu_toy_model_shows_all_four_phases(tmp_path):
    """Liu et al. 2022, Fig. 6c: on the toy addition model, the decoder's learning rate and
    weight decay decide the phase. At a small learning rate, no weight decay comprehends,
    some weight decay groks, and too much confuses. At a large learning rate the decoder
    memorises. Generalising members have a perfectly structured (linear) embedding."""
    config = gc.RunConfig(
        name="science-liu-phases",
        task=gc.ToyAddition(p=10, train_fraction=0.82),
        model=gc.SumEmbeddingMLP(embed_dim=1, hidden=[64, 64], activation="tanh"),
        optim=gc.AdamW(betas=(0.9, 0.999), warmup_steps=0, groups={"embed": {"lr": 1e-3, "weight_decay": 0.0}}),
        steps=3000,
        batch_size=None,
        sweep={"lr": [4.64e-4, 6e-3], "weight_decay": [0.0, 1.78, 8.0]},
        eval_points=60,
        checkpoints=2,
    )
    run = gc.train(config, root=tmp_path, progress=False)
    phases = classify_phases(run.history, threshold=0.9, lag=300).set_index(["lr", "weight_decay"])
    phase = phases["phase"].to_dict()
    assert phase[(4.64e-4, 0.0)] == "comprehension", phases
    assert phase[(4.64e-4, 8.0)] == "confusion", phases
    assert phase[(6e-3, 0.0)] == "memorization", phases
    assert phase[(6e-3, 1.78)] == "memorization", phases
    # Grokking: generalisation that trails the fit much more than in comprehension.
    delay = phases["val_step"] - phases["train_step"]
    assert delay[(4.64e-4, 1.78)] > 2 * delay[(4.64e-4, 0.0)], phases

    quality = {key: rqi(run.model(member=int(m)).embed.weight) for key, m in phases["member"].items()}
    assert quality[(4.64e-4, 0.0)] > 0.95 and quality[(4.64e-4, 1.78)] > 0.95, quality
    assert quality[(6e-3, 0.0)] < 0.5, quality
