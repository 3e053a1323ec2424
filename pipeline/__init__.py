"""digit-pipeline: a DVC pipeline for Kaggle's Digit Recognizer (ingest, augment, tune, train, predict).

The one thing done at import: TensorFlow's C++ log lines are kept off stderr (pipeline/quiet.py) before any
module of the package imports Keras; DIGIT_VERBOSE=1 (or --verbose) keeps them."""

from pipeline import quiet

quiet.install()
