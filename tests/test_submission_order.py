"""The submission's rows are the test rows in order: the label for ImageId i is the argmax of test row
i-1's probabilities. Checked end to end through predict (batches with a partial last one, TTA views, the
fold average, the CSV) with fold models whose answer is known: the class of each synthetic image is its
brightness, and the model reads it off the mean pixel exactly (a softmax over the tangent lines of
-(m - m_k)^2, whose argmax is the class k whose mean m_k is nearest)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import yaml

from pipeline import paths, predict
from pipeline.lib.files import read_npz, write_json, write_npz
from pipeline.lib.training_data import training_digest
from tests.conftest import dump_params

LEVELS = 20 + 23 * np.arange(10)  # the pixel value of class k's square
SQUARE = (slice(8, 20), slice(8, 20))  # 12 x 12 pixels, far from the border: whole-pixel shifts keep it whole
MEANS = LEVELS * 144 / 784  # class k's mean pixel


def square_digits(labels: np.ndarray) -> np.ndarray:
    """Return 28x28 uint8 images, one per label: a centred square as bright as its class says."""
    images = np.zeros((len(labels), 28, 28), np.uint8)
    images[:, SQUARE[0], SQUARE[1]] = LEVELS[labels][:, None, None]
    return images


def mean_reader() -> keras.Model:
    """Return a model whose predicted class is the class whose mean pixel is nearest the image's."""
    inputs = keras.Input((28, 28, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    probs = keras.layers.Dense(10, activation="softmax", dtype="float32")(mean)
    model = keras.Model(inputs, probs, name="mean_reader")
    model.layers[-1].set_weights([(2 * MEANS)[None, :].astype(np.float32), (-(MEANS**2)).astype(np.float32)])
    return model


@pytest.fixture
def known_answers(project):
    """The tiny project with fold models that read the class off the brightness, and test rows whose classes
    are known (shuffled, 37 rows: batches of 8 leave a partial last one)."""
    doc = yaml.safe_load(paths.PARAMS.read_text())
    doc["predict"].update(tta_views=4, batch_size=8)  # the whole-pixel shift views
    doc.setdefault("device", {})["precision"] = "float32"
    doc["model"]["ensemble"] = []
    dump_params(doc, paths.PARAMS)  # derived: as the composition writes it
    folds = doc["train"]["folds"]
    rng = np.random.default_rng(7)
    train_labels = np.arange(60) % 10
    write_npz(
        paths.TRAIN_NPZ, x=square_digits(train_labels), y=train_labels.astype(np.uint8), fold=np.arange(60) % folds
    )
    test_labels = rng.permutation(np.arange(37) % 10)
    write_npz(paths.TEST_NPZ, x=square_digits(test_labels))
    model = mean_reader()
    written = read_npz(paths.TRAIN_NPZ)
    trained_on = {"train_data": training_digest(written["x"], written["y"], written["fold"])}  # predict checks
    for fold in range(folds):
        paths.fold_model(doc["model"]["name"], fold).parent.mkdir(parents=True, exist_ok=True)
        model.save(paths.fold_model(doc["model"]["name"], fold))
        write_json(paths.fold_meta(doc["model"]["name"], fold), trained_on)
    return test_labels


def test_the_label_of_image_id_i_is_the_class_of_test_row_i_minus_1(known_answers: np.ndarray) -> None:
    assert predict.main([]) == 0
    lines = paths.LATEST_SUBMISSION.read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert lines[1:] == [f"{i},{label}" for i, label in enumerate(known_answers, start=1)]
    probs = read_npz(paths.TEST_PROBS_NPZ)["probs"]
    assert np.array_equal(probs.argmax(axis=1), known_answers)
    report = json.loads(paths.PREDICT_JSON.read_text())
    assert report["oof_accuracy"] == report["oof_tta_accuracy"] == 1.0  # OOF rows meet their own labels too


def test_the_oracle_reads_every_class_and_every_view(known_answers: np.ndarray) -> None:
    """Control: the known answers hold for each image on its own, under every view predict averages."""
    from pipeline.lib.tta import predict_views

    images = square_digits(np.arange(10))
    views = predict_views(mean_reader(), images, 4, batch_size=8)
    assert np.array_equal(views.argmax(axis=2), np.tile(np.arange(10), (5, 1)))
    assert views.max(axis=2).min() > 0.99
