"""How the regression runner spreads its cases over CI nodes (common/ci/matrix.py plan_nodes): by expected cost,
not round-robin; with fewer cases than nodes, accuracy cases are split by images."""
from __future__ import annotations

from common.ci.matrix import Case, plan_nodes


def _case(kind, bs=1, variant="v", precision="fp32"):
    return Case(model="m", variant=variant, backend="onnxruntime", precision=precision, batch_size=bs, kind=kind,
                spec="m")


def _cost(table):
    def cost(c):
        base = table[c.base_id]
        if not c.image_shard:
            return base
        j, m = map(int, c.image_shard.split("/"))
        return base / m
    return cost


def test_cases_are_balanced_by_cost_not_round_robin():
    big, small = _case("accuracy", variant="big"), _case("accuracy", variant="small")
    perf = [_case("performance", bs) for bs in (1, 2, 4)]
    cost = _cost({big.id: 100.0, small.id: 10.0, **{p.id: 10.0 for p in perf}})
    nodes = plan_nodes([*perf, small, big], 2, cost)
    loads = [sum(cost(c) for c in node) for node in nodes]
    # round-robin over the matrix order (big, small, perf1, perf2, perf4) would give 100+10+10 vs 10+10
    assert sorted(loads) == [40.0, 100.0]
    assert nodes[0] == [big] and sorted(c.id for c in nodes[1]) == sorted(c.id for c in [small, *perf])
    assert plan_nodes([big, small, *reversed(perf)], 2, cost) == nodes   # whatever order the cases come in


def test_fewer_cases_than_nodes_split_the_accuracy_cases_by_images():
    acc, perf = _case("accuracy"), _case("performance")
    cost = _cost({acc.id: 90.0, perf.id: 5.0})
    nodes = plan_nodes([acc, perf], 4, cost)
    assert all(len(node) == 1 for node in nodes)
    assert sorted(c.image_shard for node in nodes for c in node if c.kind == "accuracy") == ["1/3", "2/3", "3/3"]
    assert [c.id for node in nodes for c in node if c.kind == "performance"] == [perf.id]
    assert nodes[0][0].id == "m/v/onnxruntime/fp32/bs1/accuracy/images-1-of-3"
    one = plan_nodes([acc], 4, cost)
    assert [node[0].image_shard for node in one] == ["1/4", "2/4", "3/4", "4/4"]
    # nothing to split: a node may stay empty
    assert plan_nodes([perf], 3, cost) == [[perf], [], []]
