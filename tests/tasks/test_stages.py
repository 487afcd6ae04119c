from prefect.states import Completed, Failed

from config.errors import DataValidationError
from tasks.stages import retry_on_io, train_task, validate_task


def _failed(exc: BaseException):
    return Failed(data=exc)


def test_io_failures_are_retried_bad_data_is_not():
    from mlflow.exceptions import MlflowException

    assert retry_on_io(None, None, _failed(OSError("disk hiccup")))
    assert retry_on_io(None, None, _failed(MlflowException("tracking server unavailable")))
    assert not retry_on_io(None, None, _failed(DataValidationError("too many bad rows")))
    assert not retry_on_io(None, None, _failed(ValueError("bug")))
    assert not retry_on_io(None, None, Completed())


def test_task_wrappers():
    assert validate_task.retries == 3 and validate_task.retry_condition_fn is retry_on_io
    assert "gpu" in train_task.tags and train_task.retries == 0
