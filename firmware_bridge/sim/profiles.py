"""Sensor signal generators for the simulator and for the shipped model's training data.

Pure: no I/O, no clock, no numpy at import time. Each profile keeps its own sample time, which
``sample()`` advances by exactly ``1 / hz``; everything random comes from one ``random.Random``
seeded at construction, so a seed fixes the whole sequence (and the machine instance).

* :class:`VibrationProfile` — a 3-axis accelerometer (g) on a rotating machine. Per instance: a
  shaft speed (1200-3000 rpm) with slow drift, sensor orientation, zero-g offsets and noise, and the
  amplitudes of every fault. The condition selects which fault components are added to the baseline:

  - ``normal``: gravity on ``az`` plus small 1x and 2x shaft harmonics and sensor noise;
  - ``imbalance``: a strong 1x radial orbit (``ax``/``ay`` 90 degrees apart), slowly varying;
  - ``bearing``: periodic impacts at the outer-race defect frequency (BPFO, 3.5-5.5x shaft) that
    each ring a structural resonance down, amplitude-modulated by the shaft rotation.

  Every sinusoid is evaluated in continuous time and sampled, so a profile makes sense at any rate in
  ``VIBRATION_HZ``; frequencies are clipped to ``NYQUIST_FRACTION * hz`` so nothing aliases. The
  shipped model is trained for 400 Hz and 128-sample windows (docs/model.md).
* :class:`EnvironmentProfile` — temperature, relative humidity, pressure (a BME280): a daily cycle,
  bounded slow drift and sensor noise.

:func:`vibration_windows` is the training / evaluation data of the shipped classifier: windows cut
from independent :class:`VibrationProfile` instances. Changing the physics changes what the model
was trained on; bump ``GENERATOR_VERSION`` and retrain (``tools/train_vibration.py``).
"""

from __future__ import annotations

import cmath
import math
import random
from typing import TYPE_CHECKING, Protocol

from firmware_bridge.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Bumped whenever the vibration physics changes: the shipped model records the version it was
# trained on (edge_agent/models/vibration.json) and a test compares the two.
GENERATOR_VERSION = 1

CONDITIONS: tuple[str, ...] = ("normal", "imbalance", "bearing")
PROFILE_NAMES: tuple[str, ...] = ("vibration", "environment")

# Sample rates (Hz). Vibration: the 50-1000 Hz of the issue, the output data rates MEMS
# accelerometers such as the ADXL345 and MPU-6050 are usually run at. Environment: 10 Hz is already
# faster than a BME280 in its weather-monitoring mode; 0.1 Hz is one reading every 10 s.
VIBRATION_HZ = (50.0, 1000.0)
ENVIRONMENT_HZ = (0.1, 10.0)
DEFAULT_VIBRATION_HZ = 400.0  # the rate the shipped model is trained for
DEFAULT_ENVIRONMENT_HZ = 1.0
# Highest frequency a sinusoid may have, as a fraction of the sample rate: a little under Nyquist
# (0.5), where a real accelerometer's anti-aliasing filter already rolls off.
NYQUIST_FRACTION = 0.45

# --- vibration physics (units: Hz, s, g) -------------------------------------------------------
# Shaft speed of a machine instance: 1200-3000 rpm covers 2- and 4-pole induction motors on 50/60 Hz
# with and without a belt drive.
SHAFT_RPM = (1200.0, 3000.0)
# Speed drift: a mean-reverting random walk of the relative speed (load changes, supply frequency),
# standard deviation 0.5 %, correlation time 1.5 s.
SPEED_DRIFT_STD = 0.005
SPEED_DRIFT_TAU_S = 1.5
# Sensor mounting: the housing is tilted up to 5 degrees and the sensor turned arbitrarily about
# the vertical, so a little gravity leaks into ax/ay and the radial axes are mixed.
TILT_MAX_DEG = 5.0
# Zero-g offset per axis: the ADXL345 datasheet gives +-40 mg typical at the extremes of its axes;
# a calibrated board does better.
ZERO_G_OFFSET_G = 0.02
# Broadband noise per axis (standard deviation): MEMS noise density (~150-400 ug/sqrt(Hz)) over a
# 200 Hz bandwidth is ~2-6 mg; the machine's own broadband vibration adds to it.
NOISE_STD_G = (0.004, 0.02)
# A healthy machine: residual imbalance and misalignment leave small 1x and 2x components.
NORMAL_1X_G = (0.005, 0.035)
NORMAL_2X_G = (0.002, 0.015)
NORMAL_AXIAL_G = (0.001, 0.01)
# Imbalance: the centrifugal force of an off-centre mass turns with the shaft, a radial 1x orbit,
# elliptical because the support is stiffer in one direction; its amplitude scales with speed
# squared and wanders slowly (+-AMPLITUDE_WANDER) as load and temperature change.
IMBALANCE_G = (0.04, 0.4)  # from barely above a healthy 1x to severe
IMBALANCE_ELLIPTICITY = (0.6, 1.0)  # minor / major axis of the orbit
IMBALANCE_WANDER = 0.1
IMBALANCE_WANDER_PERIOD_S = (1.0, 4.0)
# Outer-race bearing fault: the ball pass frequency outer race is (n/2)(1 - d/D cos a) times the
# shaft speed, 3.5-5.5x for common deep-groove bearings with 8-14 balls. Each ball hitting the
# defect rings a housing resonance down (here 110-175 Hz: low, because the sensor samples at 400 Hz,
# so it stands for the resonance as seen through the sensor's bandwidth) for 0.6-1.5 cycles of
# its time constant. Impacts are load-zone modulated with the shaft and slip 1 % in timing.
BPFO_FACTOR = (3.5, 5.5)
RESONANCE_HZ = (110.0, 175.0)
RING_CYCLES = (0.6, 1.5)  # time constant of the ring-down, in resonance periods
IMPACT_G = (0.04, 0.45)  # peak of one impact: from incipient (lost in the noise) to severe
IMPACT_MODULATION = (0.1, 0.4)  # depth of the shaft-synchronous amplitude modulation
IMPACT_JITTER = 0.01  # relative standard deviation of the impact interval (rolling-element slip)
IMPACT_SCATTER = 0.1  # relative standard deviation of one impact's amplitude

# --- environment physics (units: degC, %RH, hPa, s) --------------------------------------------
DAY_S = 86_400.0
ENV_TEMP_C = (18.0, 26.0)  # indoor set point
ENV_TEMP_DAILY_C = (1.0, 4.0)  # half the daily swing
ENV_TEMP_DRIFT = (0.8, 3_600.0)  # (std degC, correlation time s) of the weather / HVAC drift
ENV_HUM_RH = (35.0, 60.0)
ENV_HUM_PER_C = -2.5  # relative humidity falls as air warms at constant moisture (~-5 %/degC
# relative, ~-2.5 %RH absolute around 50 %RH)
ENV_HUM_DRIFT = (3.0, 1_800.0)
ENV_PRESS_HPA = (995.0, 1_030.0)
ENV_PRESS_TIDE_HPA = 0.8  # the semidiurnal atmospheric tide, ~1 hPa in mid-latitudes
ENV_PRESS_DRIFT = (4.0, 6 * 3_600.0)  # synoptic weather systems
# BME280 datasheet RMS noise with some oversampling: 0.005 degC, 0.02 %RH, 0.2 Pa (x10 for margin).
ENV_NOISE = (0.02, 0.1, 0.02)
# Drift never leaves +-this many standard deviations, so the readings stay bounded forever.
ENV_DRIFT_CLAMP_STD = 4.0
# Rooms and weather have thermal and air mass: the random walk is smoothed by a 10-minute lag, so
# consecutive readings differ by little more than sensor noise.
ENV_DRIFT_LAG_S = 600.0
ENV_HUM_LIMITS = (0.0, 100.0)

# Windows of the training data: each is cut after a random warm-up of up to this many windows'
# worth of samples, so windows start at an arbitrary point of the drift and rotation.
WINDOW_WARMUP_WINDOWS = 1


class ProfileError(ConfigError, ValueError):
    """An unknown profile or condition, or a rate out of range. A ``ValueError`` for plain callers."""


class Profile(Protocol):
    """A source of samples: ``channels`` name the values of every ``sample()``, made at ``hz``."""

    hz: float
    channels: tuple[str, ...]

    @property
    def condition(self) -> str: ...

    def set_condition(self, name: str) -> None: ...

    def sample(self) -> tuple[float, ...]: ...


def _check_hz(kind: str, hz: float, limits: tuple[float, float]) -> float:
    low, high = limits
    if not (isinstance(hz, int | float) and math.isfinite(hz) and low <= hz <= high):
        raise ProfileError(f"{kind} rate {hz!r} Hz is outside {low:g}..{high:g} Hz")
    return float(hz)


def _ou_step(x: float, std: float, decay: float, rng: random.Random) -> float:
    """One exact step of a mean-zero Ornstein-Uhlenbeck process; ``decay = exp(-dt / tau)``."""
    return x * decay + std * math.sqrt(1.0 - decay * decay) * rng.gauss(0.0, 1.0)


def _rotation(rng: random.Random) -> tuple[tuple[float, float, float], ...]:
    """A sensor mounting: turned about the vertical by any angle, then tilted a few degrees."""
    yaw = rng.uniform(0.0, 2.0 * math.pi)
    roll = math.radians(rng.uniform(-TILT_MAX_DEG, TILT_MAX_DEG))
    pitch = math.radians(rng.uniform(-TILT_MAX_DEG, TILT_MAX_DEG))
    cy, sy = math.cos(yaw), math.sin(yaw)
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    # The product of the roll, pitch and yaw rotations, written out.
    return (
        (cp * cy, -cp * sy, sp),
        (sr * sp * cy + cr * sy, -sr * sp * sy + cr * cy, -sr * cp),
        (-cr * sp * cy + sr * sy, cr * sp * sy + sr * cy, cr * cp),
    )


class VibrationProfile:
    """A 3-axis accelerometer (``ax``, ``ay``, ``az`` in g) on one rotating machine instance."""

    channels: tuple[str, ...] = ("ax", "ay", "az")

    def __init__(
        self, hz: float = DEFAULT_VIBRATION_HZ, seed: int | None = None, condition: str = "normal"
    ) -> None:
        self.hz = _check_hz("vibration", hz, VIBRATION_HZ)
        self._condition = _check_condition(condition)
        rng = self._rng = random.Random(seed)  # noqa: S311 (simulation, not crypto)
        self._dt = 1.0 / self.hz
        self._f_max = NYQUIST_FRACTION * self.hz
        self._t = 0.0
        # The machine instance. The draws happen in a fixed order whatever the condition, so one seed
        # is one machine, and switching condition keeps everything else.
        self._shaft_hz = rng.uniform(*SHAFT_RPM) / 60.0
        self._speed_dev = rng.gauss(0.0, SPEED_DRIFT_STD)
        self._speed_decay = math.exp(-self._dt / SPEED_DRIFT_TAU_S)
        self._rot = _rotation(rng)
        self._offset = tuple(rng.uniform(-ZERO_G_OFFSET_G, ZERO_G_OFFSET_G) for _ in range(3))
        self._noise = rng.uniform(*NOISE_STD_G)
        self._a1 = rng.uniform(*NORMAL_1X_G)
        self._a1_ratio = rng.uniform(*IMBALANCE_ELLIPTICITY)
        self._a2 = rng.uniform(*NORMAL_2X_G)
        self._a2_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._axial = rng.uniform(*NORMAL_AXIAL_G)
        self._axial_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._imb = rng.uniform(*IMBALANCE_G)
        self._imb_ratio = rng.uniform(*IMBALANCE_ELLIPTICITY)
        self._imb_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._imb_wander_hz = 1.0 / rng.uniform(*IMBALANCE_WANDER_PERIOD_S)
        self._imb_wander_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._bpfo = rng.uniform(*BPFO_FACTOR)
        resonance = min(rng.uniform(*RESONANCE_HZ), self._f_max)
        tau = rng.uniform(*RING_CYCLES) / resonance
        # The ring-down of every impact, summed in one complex state S = sum a_k exp(p (t - t_k)),
        # exact in continuous time: it decays by exp(p dt) per sample. The signal is Im(u S) with
        # u = p / |p|: each impact's ring-down then integrates to zero, as an acceleration must (a
        # plain decaying sine has a positive mean, which dense impacts would turn into a fake offset).
        self._pole = complex(-1.0 / tau, 2.0 * math.pi * resonance)
        self._pole_step = cmath.exp(self._pole * self._dt)
        self._ring_phase = self._pole / abs(self._pole)
        self._impact = rng.uniform(*IMPACT_G)
        self._impact_mod = rng.uniform(*IMPACT_MODULATION)
        self._impact_mod_phase = rng.uniform(0.0, 2.0 * math.pi)
        direction = (rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), 0.3 * rng.gauss(0.0, 1.0))
        norm = math.sqrt(sum(c * c for c in direction)) or 1.0
        self._impact_dir = tuple(c / norm for c in direction)
        self._ring = 0j
        # Rotation phases start anywhere: the windows a model sees start at arbitrary phase.
        self._phase1 = rng.uniform(0.0, 2.0 * math.pi)
        self._phase2 = rng.uniform(0.0, 2.0 * math.pi)
        self._until_impact = rng.uniform(0.0, 1.0) / (self._bpfo * self._shaft_hz)

    @property
    def condition(self) -> str:
        return self._condition

    @property
    def shaft_hz(self) -> float:
        """The machine's nominal shaft speed (Hz) before drift and Nyquist clipping."""
        return self._shaft_hz

    @property
    def bpfo_hz(self) -> float:
        """The nominal rate of bearing-fault impacts (Hz), ``BPFO_FACTOR`` times the shaft speed."""
        return self._bpfo * self._shaft_hz

    def set_condition(self, name: str) -> None:
        self._condition = _check_condition(name)

    def sample(self) -> tuple[float, ...]:
        """The reading at the current sample time; then the time advances by ``1 / hz``."""
        rng = self._rng
        c1, s1 = math.cos(self._phase1), math.sin(self._phase1)
        # Body frame: x, y radial (perpendicular to the shaft), z vertical.
        x = self._a1 * c1 + self._a2 * math.cos(self._phase2 + self._a2_phase)
        y = self._a1 * self._a1_ratio * s1 + self._a2 * math.sin(self._phase2 + self._a2_phase)
        z = 1.0 + self._axial * math.cos(self._phase1 + self._axial_phase)
        if self._condition == "imbalance":
            speed = 1.0 + self._speed_dev
            wander = 1.0 + IMBALANCE_WANDER * math.sin(
                2.0 * math.pi * self._imb_wander_hz * self._t + self._imb_wander_phase
            )
            amp = self._imb * wander * speed * speed  # centrifugal force ~ omega^2
            x += amp * math.cos(self._phase1 + self._imb_phase)
            y += amp * self._imb_ratio * math.sin(self._phase1 + self._imb_phase)
        elif self._condition == "bearing":
            ring = (self._ring * self._ring_phase).imag
            dx, dy, dz = self._impact_dir
            x += ring * dx
            y += ring * dy
            z += ring * dz
        rot = self._rot
        noise = self._noise
        out = tuple(
            rot[i][0] * x + rot[i][1] * y + rot[i][2] * z + self._offset[i] + rng.gauss(0.0, noise)
            for i in range(3)
        )
        self._advance()
        return out

    def _advance(self) -> None:
        dt = self._dt
        rng = self._rng
        self._t += dt
        self._speed_dev = _ou_step(self._speed_dev, SPEED_DRIFT_STD, self._speed_decay, rng)
        shaft = self._shaft_hz * (1.0 + self._speed_dev)
        tau = 2.0 * math.pi
        self._phase1 = (self._phase1 + tau * min(shaft, self._f_max) * dt) % tau
        self._phase2 = (self._phase2 + tau * min(2.0 * shaft, self._f_max) * dt) % tau
        # Impacts between the old and the new sample time join the ring-down at their own age. The
        # impact rate is an event rate, not a sampled sinusoid, so it is not clipped.
        self._ring *= self._pole_step
        remaining = self._until_impact - dt
        while remaining <= 0.0:
            age = -remaining
            load = 1.0 + self._impact_mod * math.cos(
                self._phase1 - tau * shaft * age + self._impact_mod_phase
            )
            amp = self._impact * load * (1.0 + IMPACT_SCATTER * rng.gauss(0.0, 1.0))
            self._ring += amp * cmath.exp(self._pole * age)
            remaining += max(0.0, 1.0 + IMPACT_JITTER * rng.gauss(0.0, 1.0)) / (self._bpfo * shaft)
        self._until_impact = remaining


class EnvironmentProfile:
    """Temperature (degC), relative humidity (%RH) and pressure (hPa) in one room, like a BME280."""

    channels: tuple[str, ...] = ("temp", "hum", "press")

    def __init__(
        self, hz: float = DEFAULT_ENVIRONMENT_HZ, seed: int | None = None, condition: str = "normal"
    ) -> None:
        self.hz = _check_hz("environment", hz, ENVIRONMENT_HZ)
        self._condition = "normal"
        self.set_condition(condition)
        rng = self._rng = random.Random(seed)  # noqa: S311 (simulation, not crypto)
        self._dt = 1.0 / self.hz
        self._t = 0.0
        self._temp = rng.uniform(*ENV_TEMP_C)
        self._temp_daily = rng.uniform(*ENV_TEMP_DAILY_C)
        self._day_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._hum = rng.uniform(*ENV_HUM_RH)
        self._press = rng.uniform(*ENV_PRESS_HPA)
        self._tide_phase = rng.uniform(0.0, 2.0 * math.pi)
        self._drift_std = (ENV_TEMP_DRIFT[0], ENV_HUM_DRIFT[0], ENV_PRESS_DRIFT[0])
        self._decay = tuple(
            math.exp(-self._dt / tau) for tau in (ENV_TEMP_DRIFT[1], ENV_HUM_DRIFT[1], ENV_PRESS_DRIFT[1])
        )
        self._walk = [rng.gauss(0.0, std) for std in self._drift_std]
        self._drift = list(self._walk)
        self._lag = 1.0 - math.exp(-self._dt / ENV_DRIFT_LAG_S)

    @property
    def condition(self) -> str:
        return self._condition

    def set_condition(self, name: str) -> None:
        if name != "normal":
            raise ProfileError(f"the environment profile has no condition {name!r}", hint="only 'normal'")

    def sample(self) -> tuple[float, ...]:
        """The reading at the current sample time; then the time advances by ``1 / hz``."""
        rng = self._rng
        day = 2.0 * math.pi * self._t / DAY_S
        temp_dev = self._temp_daily * math.sin(day + self._day_phase) + self._drift[0]
        temp = self._temp + temp_dev + rng.gauss(0.0, ENV_NOISE[0])
        hum = self._hum + ENV_HUM_PER_C * temp_dev + self._drift[1] + rng.gauss(0.0, ENV_NOISE[1])
        hum = min(max(hum, ENV_HUM_LIMITS[0]), ENV_HUM_LIMITS[1])
        tide = ENV_PRESS_TIDE_HPA * math.sin(2.0 * day + self._tide_phase)
        press = self._press + tide + self._drift[2] + rng.gauss(0.0, ENV_NOISE[2])
        self._t += self._dt
        for i, std in enumerate(self._drift_std):
            bound = ENV_DRIFT_CLAMP_STD * std
            self._walk[i] = min(max(_ou_step(self._walk[i], std, self._decay[i], rng), -bound), bound)
            self._drift[i] += (self._walk[i] - self._drift[i]) * self._lag
        return (temp, hum, press)


def _check_condition(name: str) -> str:
    if name not in CONDITIONS:
        raise ProfileError(f"unknown condition {name!r}", hint=f"choose one of {', '.join(CONDITIONS)}")
    return name


def make_profile(name: str, hz: float | None = None, seed: int | None = None) -> Profile:
    """The profile called ``name`` (one of ``PROFILE_NAMES``) at ``hz`` (its default when None)."""
    if name == "vibration":
        return VibrationProfile(DEFAULT_VIBRATION_HZ if hz is None else hz, seed=seed)
    if name == "environment":
        return EnvironmentProfile(DEFAULT_ENVIRONMENT_HZ if hz is None else hz, seed=seed)
    raise ProfileError(f"unknown profile {name!r}", hint=f"choose one of {', '.join(PROFILE_NAMES)}")


def vibration_windows(
    n: int, window: int = 128, hz: float = DEFAULT_VIBRATION_HZ, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``n`` windows ``(n, window, 3)`` float32 in g and their labels (index into ``CONDITIONS``).

    Each window comes from its own machine instance (seeded from ``seed``), its condition drawn so the
    classes are balanced (counts differ by at most one), cut after a random warm-up so it starts at
    an arbitrary point of rotation and drift. The same arguments give the same arrays.
    """
    import numpy as np

    if n < 0 or window < 1:
        raise ProfileError(f"need n >= 0 and window >= 1, not n={n}, window={window}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CONDITIONS))
    instance_seeds = rng.integers(0, 2**63 - 1, size=n)
    warmups = rng.integers(0, WINDOW_WARMUP_WINDOWS * window + 1, size=n)
    data = np.empty((n, window, 3), dtype=np.float32)
    for i in range(n):
        profile = VibrationProfile(hz, seed=int(instance_seeds[i]), condition=CONDITIONS[labels[i]])
        for _ in range(int(warmups[i])):
            profile.sample()
        data[i] = [profile.sample() for _ in range(window)]
    return data, labels
