"""The admission estimate: each job's time from its steps (fitted to recent edits), the work ahead, the deadline."""

from __future__ import annotations

import pytest

from kontext.errors import DeadlineUnreachable
from kontext.jobs.admission import AdmissionControl, EditTimeModel, fit
from kontext.jobs.record import JobRecord
from protocol import EditRequest, JobStatus


def _done(steps: int, seconds: float) -> JobRecord:
    return JobRecord(id=f"j{steps}-{seconds}", request=EditRequest(prompt="p", seed=1, num_inference_steps=steps),
                     status=JobStatus.COMPLETED, started_at=100.0, finished_at=100.0 + seconds)


def test_a_mix_of_step_counts_is_fitted_as_a_fixed_part_plus_a_time_per_step() -> None:
    model = fit([(10, 3.0, None), (28, 6.6, None), (10, 3.0, None), (4, 1.8, None)])  # 1 s fixed + 0.2 s a step
    assert model is not None
    assert model.fixed == pytest.approx(1.0) and model.per_step == pytest.approx(0.2)
    assert model.seconds(28) == pytest.approx(6.6) and model.seconds(10, done=5) == pytest.approx(1.0)


def test_one_step_count_alone_is_taken_as_proportional_and_no_sample_as_unknown() -> None:
    assert fit([]) is None
    assert fit([(10, 3.0, None), (10, 3.2, None)]) == EditTimeModel(0.0, pytest.approx(0.31))


def test_measured_step_times_split_the_fixed_part_with_one_step_count() -> None:
    """The validator sends 10-step jobs only: a proportional guess would make a 28-step job (or a 2-step one) far
    off where most of the time is fixed (text encoders, the VAE); the time between steps tells the two apart."""
    model = fit([(10, 3.0, 0.2), (10, 3.2, 0.2), (10, 2.9, 0.2)])
    assert model is not None
    assert model.per_step == pytest.approx(0.2) and model.fixed == pytest.approx(1.0)
    assert model.seconds(28) == pytest.approx(6.6)


def test_the_estimate_sums_the_work_ahead_in_seconds_not_in_jobs() -> None:
    """Two 4-step jobs ahead weigh less than one 28-step job: a count of jobs would get both wrong."""
    admission = AdmissionControl(15.0, 20, margin_seconds=1.0)
    for steps, seconds in ((10, 3.0), (28, 6.6), (4, 1.8)):
        admission.record(_done(steps, seconds))
    admission.check(steps=10, ahead=[4, 4, 4, 4], running=[], workers=1)  # 4 x 1.8 + 3 + 1 = 11.2 s: in time
    with pytest.raises(DeadlineUnreachable, match="past the 15s deadline") as refused:
        admission.check(steps=10, ahead=[28, 28], running=[], workers=1)  # 2 x 6.6 + 3 + 1 = 17.2 s
    assert refused.value.retry_after == 3
    admission.check(steps=10, ahead=[28, 28], running=[], workers=2)  # two engines halve the backlog: 11.6 s
    with pytest.raises(DeadlineUnreachable):  # a running job counts for what it has left
        admission.check(steps=10, ahead=[28], running=[(28, 0)], workers=1)
    admission.check(steps=10, ahead=[28], running=[(28, 27)], workers=1)  # nearly done: 0.2 + 6.6 + 4 = 10.8 s


def test_no_deadline_or_no_edit_time_yet_admits_everything() -> None:
    AdmissionControl(None, 20).check(steps=100, ahead=[100] * 50, running=[], workers=1)
    AdmissionControl(15.0, 20).check(steps=100, ahead=[100] * 50, running=[], workers=1)  # a cold miner
    AdmissionControl(0.0, 20).check(steps=100, ahead=[100] * 50, running=[], workers=1)  # 0 is off
