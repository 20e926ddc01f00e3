import pytest

from loadtest.schedule import make_schedule


def test_constant_schedule_is_evenly_spaced_and_bounded():
    s = make_schedule(20, 1.5)
    assert len(s) == 30
    assert s[0] == 0.0 and s[-1] == pytest.approx(1.45)
    assert all(b - a == pytest.approx(0.05) for a, b in zip(s, s[1:]))


def test_poisson_schedule_has_the_offered_mean_rate_and_replays_with_its_seed():
    s = make_schedule(1000, 5.0, "poisson", seed=7)
    assert 4700 < len(s) < 5300  # 5000 expected, sd ~71
    assert s == sorted(s) and s[-1] < 5.0
    assert s == make_schedule(1000, 5.0, "poisson", seed=7)
    assert s != make_schedule(1000, 5.0, "poisson", seed=8)


def test_max_requests_caps_the_schedule():
    assert len(make_schedule(1000, 10.0, max_requests=50)) == 50
    assert len(make_schedule(1000, 10.0, "poisson", max_requests=50)) == 50


@pytest.mark.parametrize("rate,duration,arrivals", [(0, 1, "constant"), (10, 0, "constant"), (10, 1, "bursty")])
def test_rejects_bad_input(rate, duration, arrivals):
    with pytest.raises(ValueError):
        make_schedule(rate, duration, arrivals)
