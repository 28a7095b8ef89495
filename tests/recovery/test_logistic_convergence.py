"""The logistic convergence experiment: I-OBS's error exponent is 2 (quadratic), k-IHT's is 1."""

from iobs.recovery.convergence import fitted_slopes, logistic_convergence


def test_iobs_quadratic_kiht_linear():
    r = logistic_convergence(n=600, d=30, k=3, seed=1, max_iter=40, solvers=(("iobs", {}), ("kiht", {})))
    e_iobs, e_kiht = r["curves"]["iobs"], r["curves"]["kiht"]
    assert e_iobs[-1] < 1e-14 and len(e_iobs) <= 12  # to machine precision in a few Newton steps
    s = fitted_slopes(e_iobs)
    assert s and min(s) > 1.8  # log e_{t+1} ≈ 2 log e_t
    k = fitted_slopes(e_kiht)
    assert len(k) >= 10 and max(k[-5:]) < 1.2  # linear: the exponent tends to 1
    assert all(b < a for a, b in zip(e_kiht[5:], e_kiht[6:]))  # yet monotone (a contraction)
