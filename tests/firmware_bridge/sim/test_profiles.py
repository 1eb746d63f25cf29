"""The signal generators: API, determinism, ranges, limits, and that the physics shows in the spectrum."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from firmware_bridge.errors import BridgeError
from firmware_bridge.sim import profiles
from firmware_bridge.sim.profiles import (
    CONDITIONS,
    ENVIRONMENT_HZ,
    PROFILE_NAMES,
    VIBRATION_HZ,
    EnvironmentProfile,
    Profile,
    ProfileError,
    VibrationProfile,
    make_profile,
    vibration_windows,
)


def _run(profile: Profile, n: int) -> np.ndarray:
    return np.array([profile.sample() for _ in range(n)], dtype=np.float64)


def _power(signal: np.ndarray, hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and power summed over the axes, mean removed, Hann window."""
    ac = (signal - signal.mean(axis=0)) * np.hanning(len(signal))[:, None]
    return np.fft.rfftfreq(len(signal), 1.0 / hz), (np.abs(np.fft.rfft(ac, axis=0)) ** 2).sum(axis=1)


def _band(freqs: np.ndarray, power: np.ndarray, centre: float, half_width: float) -> float:
    return float(power[np.abs(freqs - centre) <= half_width].sum())


# --- API ---------------------------------------------------------------------------------------


def test_names_and_channels() -> None:
    assert CONDITIONS == ("normal", "imbalance", "bearing")
    assert PROFILE_NAMES == ("vibration", "environment")
    vib = make_profile("vibration", seed=1)
    env = make_profile("environment", seed=1)
    assert isinstance(vib, VibrationProfile)
    assert isinstance(env, EnvironmentProfile)
    assert vib.channels == ("ax", "ay", "az")
    assert env.channels == ("temp", "hum", "press")
    assert (vib.hz, env.hz) == (400.0, 1.0)
    assert make_profile("vibration", hz=125.0).hz == 125.0
    assert vib.condition == env.condition == "normal"
    for profile in (vib, env):
        values = profile.sample()
        assert isinstance(values, tuple)
        assert len(values) == len(profile.channels)
        assert all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_unknown_profile_is_a_value_error_and_a_bridge_error() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        make_profile("pressure")
    with pytest.raises(BridgeError) as info:
        make_profile("")
    assert info.value.hint is not None


def test_import_does_not_load_numpy() -> None:
    code = "import sys, firmware_bridge.sim.profiles; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_same_seed_same_samples(name: str) -> None:
    assert np.array_equal(_run(make_profile(name, seed=7), 500), _run(make_profile(name, seed=7), 500))
    assert not np.array_equal(_run(make_profile(name, seed=7), 500), _run(make_profile(name, seed=8), 500))


def test_condition_keeps_the_machine() -> None:
    """Same seed, other condition: the same machine, so the normal baseline is shared exactly."""
    normal = _run(VibrationProfile(seed=3, condition="normal"), 800)
    imbalance = _run(VibrationProfile(seed=3, condition="imbalance"), 800)
    switched = VibrationProfile(seed=3)
    first = _run(switched, 400)
    switched.set_condition("imbalance")
    assert switched.condition == "imbalance"
    second = _run(switched, 400)
    assert np.array_equal(first, normal[:400])
    assert np.array_equal(second, imbalance[400:])


def test_windows_are_deterministic_balanced_and_typed() -> None:
    x, y = vibration_windows(31, seed=5)
    x2, y2 = vibration_windows(31, seed=5)
    assert x.shape == (31, 128, 3)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert np.array_equal(x, x2)
    assert np.array_equal(y, y2)
    counts = np.bincount(y, minlength=len(CONDITIONS))
    assert counts.max() - counts.min() <= 1
    x3, _ = vibration_windows(31, seed=6)
    assert not np.array_equal(x, x3)
    assert vibration_windows(4, window=16, hz=100.0, seed=0)[0].shape == (4, 16, 3)
    assert vibration_windows(0)[0].shape == (0, 128, 3)


def test_windows_start_at_arbitrary_phase() -> None:
    """Two windows of the same class never repeat: different instances, warm-ups and phases."""
    x, y = vibration_windows(60, seed=9)
    first = x[y == 1][:, 0, :2]
    assert len(np.unique(np.round(first, 3), axis=0)) == len(first)


@pytest.mark.parametrize(("n", "window"), [(-1, 128), (3, 0)])
def test_windows_refuse_bad_sizes(n: int, window: int) -> None:
    with pytest.raises(ValueError, match="need n"):
        vibration_windows(n, window=window)


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hz", [VIBRATION_HZ[0] - 0.01, VIBRATION_HZ[1] + 0.01, 0.0, -400.0, math.nan, math.inf]
)
def test_vibration_rate_outside_limits(hz: float) -> None:
    with pytest.raises(ValueError, match="vibration rate"):
        VibrationProfile(hz)
    with pytest.raises(ProfileError):
        make_profile("vibration", hz=hz)


@pytest.mark.parametrize("hz", [ENVIRONMENT_HZ[0] / 2, ENVIRONMENT_HZ[1] + 0.01, math.nan])
def test_environment_rate_outside_limits(hz: float) -> None:
    with pytest.raises(ValueError, match="environment rate"):
        EnvironmentProfile(hz)


@pytest.mark.parametrize("hz", [*VIBRATION_HZ, 400.0])
def test_vibration_rate_limits_are_inclusive(hz: float) -> None:
    assert VibrationProfile(hz).hz == hz


def test_unknown_condition() -> None:
    vib = VibrationProfile(seed=1)
    with pytest.raises(ValueError, match="unknown condition"):
        vib.set_condition("misalignment")
    assert vib.condition == "normal"
    with pytest.raises(ValueError, match="unknown condition"):
        VibrationProfile(condition="Normal")
    env = EnvironmentProfile(seed=1)
    env.set_condition("normal")
    for name in ("imbalance", "bearing", "hot"):
        with pytest.raises(ValueError, match="no condition"):
            env.set_condition(name)
    assert env.condition == "normal"


# --- value ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("hz", [50.0, 400.0, 1000.0])
def test_vibration_values_are_plausible(condition: str, hz: float) -> None:
    for seed in range(4):
        data = _run(VibrationProfile(hz, seed=seed, condition=condition), 2000)
        assert np.isfinite(data).all()
        assert np.abs(data).max() < 3.0  # well inside a +-16 g MEMS range
        assert 0.95 < data[:, 2].mean() < 1.05  # gravity on az, tilted at most a few degrees
        assert np.abs(data[:, :2].mean(axis=0)).max() < 0.15
        assert data.std(axis=0).min() > 0.003  # sensor noise is never absent


def test_time_advances_one_sample_per_call() -> None:
    """A profile at 2x the rate, read twice as often, traces the same shaft rotation."""
    slow = VibrationProfile(200.0, seed=11, condition="imbalance")
    fast = VibrationProfile(400.0, seed=11, condition="imbalance")
    a = _run(slow, 2000)
    b = _run(fast, 4000)
    fa, pa = _power(a, 200.0)
    fb, pb = _power(b, 400.0)
    assert fa[np.argmax(pa)] == pytest.approx(fb[np.argmax(pb)], abs=0.2)


# --- spectral sanity ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_imbalance_is_strong_at_the_shaft_frequency(seed: int) -> None:
    hz = 400.0
    normal = _run(VibrationProfile(hz, seed=seed, condition="normal"), 4096)
    imbalance = _run(VibrationProfile(hz, seed=seed, condition="imbalance"), 4096)
    shaft = VibrationProfile(hz, seed=seed).shaft_hz
    assert 20.0 <= shaft <= 50.0
    f, p_norm = _power(normal, hz)
    _, p_imb = _power(imbalance, hz)
    assert f[np.argmax(p_imb)] == pytest.approx(shaft, rel=0.03)
    assert _band(f, p_imb, shaft, 1.0) > 20 * _band(f, p_norm, shaft, 1.0)
    # Radial: the 1x energy is on ax/ay, 90 degrees apart, not on the vertical axis.
    radial = imbalance[:, :2] - imbalance[:, :2].mean(axis=0)
    assert radial.std() > 5 * (imbalance[:, 2].std())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bearing_fault_puts_energy_at_bpfo_harmonics_high_up(seed: int) -> None:
    hz = 1000.0
    normal = _run(VibrationProfile(hz, seed=seed, condition="normal"), 8192)
    bearing = _run(VibrationProfile(hz, seed=seed, condition="bearing"), 8192)
    probe = VibrationProfile(hz, seed=seed)
    f, p_norm = _power(normal, hz)
    _, p_bear = _power(bearing, hz)
    high = f >= 60.0
    assert p_bear[high].sum() > 10 * p_norm[high].sum()
    # Periodic impacts: the strongest line above the shaft harmonics is a multiple of the BPFO.
    peak = f[high][np.argmax(p_bear[high])]
    harmonic = max(1, round(peak / probe.bpfo_hz))
    assert peak == pytest.approx(harmonic * probe.bpfo_hz, rel=0.03)
    assert 3.5 <= probe.bpfo_hz / probe.shaft_hz <= 5.5


def test_normal_has_small_shaft_harmonics() -> None:
    hz = 400.0
    for seed in range(5):
        data = _run(VibrationProfile(hz, seed=seed), 4096)
        probe = VibrationProfile(hz, seed=seed)
        f, power = _power(data, hz)
        at_1x = _band(f, power, probe.shaft_hz, 1.0)
        away = _band(f, power, probe.shaft_hz * 1.5, 1.0)
        assert at_1x > away  # a line at 1x stands out of the noise floor
        assert (data[:, :2] - data[:, :2].mean(axis=0)).std() < 0.06


def test_frequencies_are_clipped_below_nyquist() -> None:
    """At 50 Hz a 20-50 Hz shaft would alias; its line sits at min(shaft, 0.45 hz) instead."""
    hz = 50.0
    for seed in range(6):
        data = _run(VibrationProfile(hz, seed=seed, condition="imbalance"), 2048)
        shaft = VibrationProfile(hz, seed=seed).shaft_hz
        f, power = _power(data, hz)
        expected = min(shaft, profiles.NYQUIST_FRACTION * hz)
        assert f[np.argmax(power)] == pytest.approx(expected, abs=0.3)


# --- environment -------------------------------------------------------------------------------


def test_environment_drift_is_bounded_and_smooth() -> None:
    hz = ENVIRONMENT_HZ[0]  # one reading every 10 s: 100k readings are 11.6 days
    env = EnvironmentProfile(hz, seed=21)
    data = _run(env, 100_000)
    temp, hum, press = data.T
    clamp = profiles.ENV_DRIFT_CLAMP_STD
    t_lo = profiles.ENV_TEMP_C[0] - profiles.ENV_TEMP_DAILY_C[1] - clamp * profiles.ENV_TEMP_DRIFT[0] - 0.2
    t_hi = profiles.ENV_TEMP_C[1] + profiles.ENV_TEMP_DAILY_C[1] + clamp * profiles.ENV_TEMP_DRIFT[0] + 0.2
    p_swing = profiles.ENV_PRESS_TIDE_HPA + clamp * profiles.ENV_PRESS_DRIFT[0] + 0.2
    assert t_lo <= temp.min() <= temp.max() <= t_hi
    assert 0.0 <= hum.min() <= hum.max() <= 100.0
    assert profiles.ENV_PRESS_HPA[0] - p_swing <= press.min()
    assert press.max() <= profiles.ENV_PRESS_HPA[1] + p_swing
    # It does move (a daily cycle and weather), but slowly: 10 s apart, readings are close.
    assert temp.max() - temp.min() > 1.0
    assert press.max() - press.min() > 1.0
    assert np.abs(np.diff(temp)).max() < 0.3
    assert np.abs(np.diff(press)).max() < 0.3


def test_environment_has_a_daily_cycle() -> None:
    """Hourly means over two days: the temperature swing repeats with a period of one day."""
    hz = 0.1
    env = EnvironmentProfile(hz, seed=4)
    per_hour = int(3600 * hz)
    temp = _run(env, 48 * per_hour)[:, 0].reshape(48, per_hour).mean(axis=1)
    assert np.corrcoef(temp[:24], temp[24:])[0, 1] > 0.5
