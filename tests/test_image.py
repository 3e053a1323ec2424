"""pipeline.lib.image (any image file -> 28x28 MNIST-style uint8) and `predict --image`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline import paths
from pipeline.lib.image import ImageError, load_digit, to_mnist


def draw_seven(size: tuple[int, int] = (300, 400), ink: int = 25, paper: int = 235) -> Image.Image:
    """Return a large grayscale drawing of a 7 with `ink` strokes on `paper`."""
    img = Image.new("L", size, paper)
    ImageDraw.Draw(img).line([(60, 80), (240, 80), (120, 340)], fill=ink, width=28)
    return img


def ink_box(image: np.ndarray) -> tuple[int, int]:
    """Return the (height, width) of the bounding box of the non-zero pixels."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """Return the (row, column) centre of mass of `image`."""
    ys, xs = np.indices(image.shape)
    total = image.sum(dtype=np.float64)
    return float((ys * image).sum() / total), float((xs * image).sum() / total)


def test_dark_on_light_jpeg_becomes_an_mnist_digit(tmp_path: Path) -> None:
    path = tmp_path / "seven.jpg"
    draw_seven().convert("RGB").save(path, quality=85)
    digit = load_digit(path)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255
    border = np.concatenate([digit[:2].ravel(), digit[-1:].ravel(), digit[:, :2].ravel(), digit[:, -2:].ravel()])
    assert border.max() == 0  # background is 0, ink is bright: the CSV representation
    assert max(ink_box(digit)) == 20
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 13.5) <= 0.6 and abs(cx - 13.5) <= 0.6
    assert digit[7, 8:18].min() > 128  # the top bar of the 7, near the top of the 20 px box


def test_light_on_dark_and_transparent_canvas_give_the_same_digit(tmp_path: Path) -> None:
    dark_on_light = tmp_path / "a.png"
    draw_seven().save(dark_on_light)
    light_on_dark = tmp_path / "b.png"
    draw_seven(ink=230, paper=10).save(light_on_dark)
    canvas = tmp_path / "c.png"
    rgba = Image.new("RGBA", (300, 400), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(60, 80), (240, 80), (120, 340)], fill=(0, 0, 0, 255), width=28)
    rgba.save(canvas)
    reference = load_digit(dark_on_light).astype(int)
    for other in (light_on_dark, canvas):
        assert np.abs(load_digit(other).astype(int) - reference).max() <= 2, other


def test_a_digit_already_in_mnist_form_survives_upscaling_and_inversion(tmp_path: Path) -> None:
    blob = np.zeros((28, 28), np.float32)  # a wide bar plus a stroke: an asymmetric "digit"
    blob[6:10, 5:23] = 255
    blob[10:24, 12:16] = 200
    original = to_mnist(blob)
    big = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.BILINEAR)
    path = tmp_path / "big.png"
    big.save(path)
    again = load_digit(path).astype(int)
    assert np.mean(np.abs(again - original.astype(int))) < 8
    assert np.corrcoef(again.ravel(), original.ravel())[0, 1] > 0.95  # same shape, same place


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("not an image", "not a readable image"), ("blank", "no digit found")],
)
def test_unusable_files_raise_clear_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "digit.png"
    if content == "blank":
        Image.new("L", (50, 50), 255).save(path)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ImageError, match=message):
        load_digit(path)


@pytest.fixture
def fold_models(project: Path) -> int:
    """Three different untrained fold models saved where predict looks for model.name's; returns the fold count."""
    import keras

    from pipeline.lib.models import build_model
    from pipeline.params import load

    name = load("model").name
    for fold in range(3):
        paths.fold_model(name, fold).parent.mkdir(parents=True)
        keras.utils.set_random_seed(fold)
        build_model("mlp").save(paths.fold_model(name, fold))
    return 3


def test_image_probs_match_the_csv_path_for_the_same_pixels(fold_models: int, tmp_path: Path) -> None:
    from pipeline import predict
    from pipeline.params import PredictParams, load

    path = tmp_path / "seven.png"
    draw_seven().save(path)
    image = load_digit(path)
    cfg = PredictParams(tta_views=2, batch_size=8)
    data = {"x": image[None], "y": np.array([7]), "fold": np.array([0])}
    name = load("model").name
    csv_path = predict.predict_folds(data, image[None], name, fold_models, cfg)["test_views"].mean(axis=0)[0]
    single = predict.image_probs(image, name, fold_models, cfg)
    assert single.sum() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(single, csv_path, atol=1e-5)
    one_fold = predict.image_probs(image, name, 1, cfg)
    assert not np.allclose(one_fold, single, atol=1e-4)  # every fold model takes part


def test_predict_image_cli_prints_the_digit_and_probabilities(
    fold_models: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline import predict

    path = tmp_path / "seven.png"
    draw_seven().save(path)
    assert predict.main(["--image", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    probs = [float(line.split()[1]) for line in lines[1:]]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-3)
    assert lines[0].startswith(f"{path}: digit {int(np.argmax(probs))} ")
    assert predict.main(["--image", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_predict_image_without_models_says_to_train(project: Path, tmp_path: Path, capsys) -> None:
    from pipeline import predict

    path = tmp_path / "seven.png"
    draw_seven().save(path)
    assert predict.main(["--image", str(path)]) == 2
    assert "dvc repro train" in capsys.readouterr().err
