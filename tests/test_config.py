

def test_differences_are_found_and_worded_once():
    from m2skd.common.config import differences, worded

    a, b = {"lr": 0.001, "seed": 1, "grid": (2, 3)}, {"lr": 0.5, "seed": 1, "workers": 4, "grid": (2, 3)}
    diff = differences(a, b)
    assert diff == {"lr": (0.001, 0.5), "workers": (None, 4)}
    assert differences(a, b, skip={"workers"}) == {"lr": (0.001, 0.5)}
    assert worded(diff, "run", "now") == "lr: run 0.001 vs now 0.5, workers: run None vs now 4"
