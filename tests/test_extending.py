"""The extension points hold what docs/extending.md promises: a new backbone is one module
and one registry entry, a new distillation term one function and one table entry, a new
run kind one entry and one step function. Each is added here, from outside the package,
and trained, distilled and scored through the unchanged pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from m2skd.train.data.dataset import ShardDataset
from m2skd.train.distillation.distill import TERMS, Term, only, term_weights
from m2skd.train.engine.checkpoint import load_checkpoint, load_model
from m2skd.train.engine.kinds import KINDS, RunKind
from m2skd.train.engine.trainer import RunSpec, read_metrics, train
from m2skd.train.evaluation.evaluate import evaluate
from m2skd.train.models import BACKBONES, ModelOutput
from m2skd.train.models.registry import BackboneEntry
from m2skd.train.models.voxels import group, max_pool

from .conftest import tiny_train_config


class ToyNet(nn.Module):
    """The smallest network that keeps the contract (models/backbone.py): a point MLP,
    max-pooled per voxel, a linear head; the voxel's features are its pooled ones."""

    def __init__(self, cfg, device=None) -> None:
        super().__init__()
        self.shape = tuple(cfg.grid_shape)
        self.feature_dim, self.feature_level = 8, "last"
        self.mlp = nn.Sequential(nn.Linear(9, 8), nn.ReLU())
        self.head = nn.Linear(8, 20)

    def forward(self, batch) -> ModelOutput:
        keys, _, inverse = group(batch.vox, self.shape)
        feats = max_pool(self.mlp(batch.feats), inverse, len(keys))
        return ModelOutput(self.head(feats)[inverse], keys, feats, inverse)


def _spec(cache, out, kind, model="polarnet", steps=2, **kw):
    cfg = tiny_train_config(model, **kw.pop("cfg", {}))
    return RunSpec(kind=kind, cfg=cfg, cache=cache, out=out, steps=steps, seed=0, progress=False, device="cpu", **kw)


def test_a_new_backbone_is_one_module_and_one_registry_entry(fused_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(BACKBONES, "toy", BackboneEntry("toy", __name__, "ToyNet", ((0.0, -3.1416, -4.0),
                                                                                     (50.0, 3.1416, 2.0))))
    teacher = train(_spec(fused_cache, tmp_path / "t", "teacher", model="toy"))
    student = train(_spec(fused_cache, tmp_path / "s", "student", model="toy", teacher=teacher))
    online = train(_spec(fused_cache, tmp_path / "o", "online", model="toy"))
    rows = read_metrics(tmp_path / "s")
    assert {"seg", "feat", "logit", "aff"} <= set(rows[-1]) and rows[-1]["feat"] > 0
    for ckpt in (student, online):
        net, cfg, _ = load_model(ckpt, torch.device("cpu"))
        assert isinstance(net, ToyNet) and load_checkpoint(ckpt)["config"]["model"]["backbone"] == "toy"
        ds = ShardDataset(fused_cache, ("08",), cfg, view="single")
        assert evaluate(net, ds, torch.device("cpu"), progress=False).summary(ds.hard_classes)["points"] > 0
    with pytest.raises(ValueError, match="unknown model 'nope'; choose from"):
        tiny_train_config("nope")


def test_a_new_distillation_term_is_one_function_and_one_table_entry(fused_cache, tmp_path, monkeypatch):
    def logit_l1(v) -> torch.Tensor:  # mean |z_s - z_t| over the student's points
        s, t, _ = v.point_logits
        return (s - t.detach()).abs().mean()

    monkeypatch.setitem(TERMS, "logit_l1", Term(logit_l1, "w_logit"))
    teacher = train(_spec(fused_cache, tmp_path / "t", "teacher"))
    train(_spec(fused_cache, tmp_path / "s", "student", teacher=teacher, cfg={"w_logit": 0.5}))
    for r in read_metrics(tmp_path / "s"):  # trained, logged and weighted like the others
        want = r["seg"] + 0.1 * r["feat"] + 0.5 * (r["logit"] + r["logit_l1"]) + r["aff"]
        assert r["logit_l1"] > 0 and r["total"] == pytest.approx(want, rel=1e-5)
    # an ablation says which terms are on: the new one is off in "feat only"
    cfg = tiny_train_config(**only("feat"))
    assert {k: w > 0 for k, w in term_weights(cfg.distill).items()} == {"feat": True, "logit": False, "aff": False,
                                                                         "logit_l1": False}


def test_a_new_run_kind_is_one_entry_and_one_step(fused_cache, tmp_path, monkeypatch):
    def both_views_step(ctx, batch, gen):  # segmentation on the single and the fused view
        fused, single = (b.to(ctx.device) for b in batch)
        seg = ctx.seg(ctx.net(single), single) + ctx.seg(ctx.net(fused), fused)
        return {"seg": seg}, single.batch_size

    monkeypatch.setitem(KINDS, "both", RunKind("both", "pair", "single", False, False, both_views_step,
                                               "Segmentation on both views."))
    ckpt = train(_spec(fused_cache, tmp_path / "b", "both", cfg={"val_every": 2}))
    state = load_checkpoint(ckpt)
    assert state["kind"] == "both" and state["step"] == 2
    assert "val_miou" in read_metrics(tmp_path / "b")[-1]  # validated on its single view
    net, _, _ = load_model(ckpt, torch.device("cpu"))  # deploys like any single-scan model
    assert net.feature_dim > 0


def test_one_registry_mechanism_for_backbones_terms_and_kinds():
    """Issue 32, item 3: the three tables are one kind of object, which refuses a name
    twice and names the entries there are when one is missing."""
    from m2skd.train.registry import Registry

    for table in (BACKBONES, TERMS, KINDS):
        assert isinstance(table, Registry)
    reg: Registry[int] = Registry("widget")
    assert reg.add("a", 1) == 1 and reg.entry("a") == 1
    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        reg.add("a", 2)
    with pytest.raises(ValueError, match=r"unknown widget 'b'; choose from \('a',\)"):
        reg.entry("b")
    with pytest.raises(ValueError, match="distillation term 'feat' registered twice"):
        TERMS.add("feat", TERMS["feat"])


def _imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, read from the source (type-only
    imports under `if TYPE_CHECKING` included: they tie the modules together for a reader too)."""
    graph = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        mod = ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))
        pkg = mod if parts[-1] == "__init__" else mod.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                name = ".".join([*base, node.module] if node.module else base)
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[mod] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_training_package_has_no_import_circle():
    """Issue 32, item 2: no module of train/ reaches itself through its imports (the run's
    steps read a narrow context, not the run: kinds -> steps -> run -> kinds is gone)."""
    graph = _imports(Path(__file__).resolve().parents[1] / "train", "m2skd.train")
    assert "m2skd.train.engine.steps" in graph and "m2skd.train.engine.run" in graph["m2skd.train.engine.trainer"]
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(d):], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # the finder is not blind: a two-module circle is found
    loop = {"a": {"b"}, "b": {"a"}}
    with pytest.raises(pytest.fail.Exception, match="a -> b -> a"):
        graph, state = loop, {}
        visit("a", ["a"])
