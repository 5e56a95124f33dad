import pytest

from tests.pipelines.helpers import tiny_model as _tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(task)`` -> path of a tiny random model (built once per session)."""
    base = tmp_path_factory.mktemp("tiny-models")
    return lambda task: _tiny_model(base, task)
