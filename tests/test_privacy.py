"""Noise calibration: the calibrated sigma spends the target; unreachable targets are refused."""

from __future__ import annotations

import pytest

import bench.privacy
from bench.errors import PrivacyError
from bench.privacy import SIGMA_FLOOR, TOLERANCE, calibrate_noise, epsilon, epsilon_spent


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("target", "q", "steps"), [(8.0, 0.1333, 30), (3.0, 0.02, 400)])
def test_calibrated_sigma_spends_the_target_within_tolerance(accountant, target, q, steps):
    cal = calibrate_noise(target, 1e-5, q, steps, accountant=accountant)
    spent = epsilon(cal.history(), 1e-5, accountant).epsilon
    assert target * (1 - TOLERANCE) <= spent <= target
    assert cal.noise_multiplier >= SIGMA_FLOOR


def test_prv_needs_no_more_noise_than_rdp():
    prv = calibrate_noise(8.0, 1e-5, 0.1333, 30, accountant="prv").noise_multiplier
    rdp = calibrate_noise(8.0, 1e-5, 0.1333, 30, accountant="rdp").noise_multiplier
    assert prv <= rdp


def test_other_charges_are_part_of_the_calibrated_history():
    charge = (5.0, 1.0, 16)
    with_charge = calibrate_noise(8.0, 1e-5, 0.1333, 30, extra=[charge], accountant="rdp")
    without = calibrate_noise(8.0, 1e-5, 0.1333, 30, accountant="rdp")
    assert with_charge.history()[0] == charge
    assert with_charge.noise_multiplier > without.noise_multiplier
    assert epsilon(with_charge.history(), 1e-5, "rdp").epsilon <= 8.0


def test_a_target_below_what_sigma_1e4_reaches_is_refused():
    with pytest.raises(PrivacyError, match="below 1e4"):
        calibrate_noise(1e-3, 1e-5, 0.1333, 30, accountant="rdp")


def test_other_charges_above_the_target_are_refused():
    with pytest.raises(PrivacyError, match="other privacy costs alone"):
        calibrate_noise(1.0, 1e-5, 0.1333, 30, extra=[(0.5, 1.0, 16)], accountant="rdp")


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_a_target_needing_less_noise_than_the_floor_is_refused(accountant):
    # epsilon=1000 needs sigma ~0.1, where one PRV evaluation took minutes and PRV was no
    # longer monotone in sigma; the floor refuses it after evaluations near sigma >= 0.3 only.
    with pytest.raises(PrivacyError, match=f"below {SIGMA_FLOOR}"):
        calibrate_noise(1000.0, 1e-5, 0.1333, 30, accountant=accountant)


def test_prv_failing_mid_search_gives_a_run_calibrated_and_reported_under_rdp_alone(monkeypatch):
    """PRV answers for large sigma and fails below a threshold inside the search's bracket: a
    search that swapped accountants per evaluation could accept a sigma on PRV's value whose
    RDP epsilon (what the run would then report) is above the target."""
    target, q, steps = 8.0, 0.1333, 30
    rdp_sigma = calibrate_noise(target, 1e-5, q, steps, accountant="rdp").noise_multiplier
    prv_sigma = calibrate_noise(target, 1e-5, q, steps, accountant="prv").noise_multiplier
    threshold = 0.5 * (prv_sigma + rdp_sigma)  # PRV fails below it, answers above it
    real = bench.privacy.PRVAccountant.get_epsilon

    def flaky(self, delta, **kwargs):
        if min(s for s, _q, _n in self.history) < threshold:
            raise RuntimeError("simulated PRV domain error")
        return real(self, delta, **kwargs)

    monkeypatch.setattr(bench.privacy.PRVAccountant, "get_epsilon", flaky)
    bench.privacy._calibrate.cache_clear()
    try:
        cal = calibrate_noise(target, 1e-5, q, steps, accountant="prv")
    finally:
        bench.privacy._calibrate.cache_clear()
    assert cal.accountant == "rdp" and cal.requested == "prv"
    assert "calibrated and reported with RDP" in cal.note
    assert cal.epsilon == epsilon(cal.history(), 1e-5, "rdp").epsilon <= target
    assert cal.noise_multiplier == pytest.approx(rdp_sigma)


def test_a_run_that_took_its_planned_steps_spends_what_was_calibrated():
    cal = calibrate_noise(8.0, 1e-5, 0.1333, 30, extra=[(5.0, 1.0, 16)], accountant="rdp")
    taken = [(cal.noise_multiplier, cal.sample_rate, 10)] * 3  # one hook entry per 10 steps
    spent = epsilon_spent(cal, taken, 1e-5)
    assert (spent.epsilon, spent.accountant, spent.note) == (cal.epsilon, "rdp", "")
    assert spent.by_accountant == cal.epsilon_by_accountant


def test_a_run_that_stopped_early_spends_the_epsilon_of_the_steps_it_took():
    cal = calibrate_noise(8.0, 1e-5, 0.1333, 30, accountant="rdp")
    taken = [(cal.noise_multiplier, cal.sample_rate, 12)]
    spent = epsilon_spent(cal, taken, 1e-5)
    assert spent.epsilon == epsilon(taken, 1e-5, "rdp").epsilon < cal.epsilon
    assert spent.by_accountant["prv"] is not None and spent.accountant == "rdp"
