"""The disabling-edit guard: running-median rules, entropy and neighborhood collapse, state round trip."""

import torch

from editscale.experiment.config import GuardConfig
from editscale.experiment.guard import Guard, UpdateSignals, weight_distance


def _s(norm=1.0, jump=1.0, nb=None, entropy=None):
    return UpdateSignals(update_norm=norm, distance_jump=jump, entropy=entropy, neighborhood=nb)


def test_median_rules_wait_for_history_then_fire():
    g = Guard(GuardConfig(min_history=3, norm_factor=10, distance_factor=5))
    assert g.check(_s(norm=1000.0)) == []  # no history yet
    for n in (1.0, 2.0, 1.5):
        g.accept(_s(norm=n, jump=n))
    assert g.check(_s(norm=14.0, jump=7.0)) == []  # below 10 x 1.5 and 5 x 1.5
    flags = g.check(_s(norm=16.0, jump=8.0))
    assert [f.rule for f in flags] == ["update_norm", "distance_jump"]
    assert flags[0].threshold == 15.0 and "update_norm" in flags[0].detail


def _started(cfg: GuardConfig, entropy: float | None, neighborhood: float | None) -> Guard:
    g = Guard(cfg)
    g.start(entropy, neighborhood)
    return g


def test_entropy_and_neighborhood_collapse():
    g = _started(GuardConfig(entropy_ratio=0.5, entropy_window=3, neighborhood_drop=0.3), 4.0, 0.9)
    assert [f.rule for f in g.check(_s(entropy=1.9))] == ["entropy"]
    assert g.check(_s(entropy=2.1)) == []
    assert [f.rule for f in g.check(_s(nb=0.5))] == ["neighborhood"]  # fell by 0.4 in one update
    for v in (0.8, 0.7, 0.6, 0.5):  # a gradual decline is no collapse
        assert g.check(_s(nb=v, entropy=4 * v)) == []
        g.accept(_s(nb=v, entropy=4 * v))
    assert g.neighborhood == 0.5
    assert g.check(_s(nb=0.1))[0].threshold == 0.2
    assert g.check(_s(entropy=1.3)) == [] and g.check(_s(entropy=1.1))  # median of the last 3: 2.4


def test_disabled_guard_never_flags_and_state_round_trips():
    off = _started(GuardConfig(enabled=False, min_history=1), 3.0, 1.0)
    off.accept(_s())
    assert off.check(_s(norm=1e9, entropy=0.0, nb=0.0)) == []
    g = _started(GuardConfig(min_history=1), 3.0, 0.9)
    g.accept(_s(norm=2.0, nb=0.8, entropy=2.5))
    h = Guard(GuardConfig(min_history=1))
    h.load_state_dict(g.state_dict())
    assert (h.entropies, h.neighborhood, h.norms, h.jumps) == ([3.0, 2.5], 0.8, [2.0], [1.0])


def test_weight_distance_is_the_same_for_a_transposed_matrix():
    w0 = torch.zeros(8, 32)
    w = w0.clone()
    w[0, 0] = 3.0
    w[1, 1] = 4.0
    expected = {"frobenius": 5.0, "distance_per_element": 5.0 / 256, "distance_per_neuron": 5.0 / 32,
                "n_neurons": 32, "n_elements": 256}
    assert weight_distance(w, w0) == expected
    assert weight_distance(w.T, w0.T) == expected  # GPT-2 stores it transposed: same answer
