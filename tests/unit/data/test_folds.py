from medseg.data.folds import kfold_splits


def test_folds_are_deterministic_disjoint_and_complete():
    ids = [f"case_{i:03d}" for i in range(23)]
    a = kfold_splits(ids, 5)
    b = kfold_splits(list(reversed(ids)), 5)  # order in dataset.json does not matter
    assert a == b
    vals = [set(f["val"]) for f in a]
    assert set().union(*vals) == set(ids)
    assert sum(len(v) for v in vals) == len(ids)  # each case validated exactly once
    for f in a:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == set(ids)
    assert kfold_splits(ids, 5, seed=1) != a
