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


def test_the_split_is_scikit_learns_kfold_on_the_sorted_ids():
    """The same folds as ``sklearn.model_selection.KFold(5, shuffle=True, random_state=12345)`` on
    the sorted ids (as nnU-Net splits), for every dataset size from 5 to 260 cases."""
    from sklearn.model_selection import KFold

    from medseg.data.folds import SPLIT_SEED
    for n in range(5, 261):
        ids = sorted(f"case_{i:03d}" for i in range(n))
        ours = kfold_splits(list(reversed(ids)), 5)
        theirs = KFold(5, shuffle=True, random_state=SPLIT_SEED).split(ids)
        for fold, (train, val) in zip(ours, theirs):
            assert fold == {"train": [ids[i] for i in train], "val": [ids[i] for i in val]}, n
