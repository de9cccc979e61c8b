"""The benchmark's baselines: the plain loop on the paper code's network trains the network grokcore trains; and
the host its table names."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed


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
