"""digit-pipeline: a DVC pipeline for Kaggle's Digit Recognizer (ingest, augment, tune, train, predict)."""
