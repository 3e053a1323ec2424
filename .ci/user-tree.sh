#!/usr/bin/env bash
# Leaves the checkout the way a user's runs leave it, without training: a quick composition with an override
# (what `make quick SET=...` and `dvc exp run -S` write), the profile chosen, the competition data ingested, five rows
# accepted from an audit (`python -m pipeline.audit --accept 5`), a ~/.keras/keras.json naming another backend, and
# a Kaggle notebook's working folder holding the user's submission. Prints the variables to export for the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
zip_path=$1 world=$2
.venv/bin/python -m pipeline.params --profile quick train.epochs=10 predict.tta_views=0
mkdir -p data/raw
cp "$zip_path" data/raw/digit-recognizer.zip
.venv/bin/python -m pipeline.ingest
# the issue table an audit writes (reports/label_issues.csv's columns), ranked, for --accept to take from
issues="$world/label_issues.csv"
printf 'row,given_label,suggested_label,self_confidence\n' > "$issues"
for row in 7 70 700 7000 41999; do printf '%s,1,7,0.01\n' "$row" >> "$issues"; done
.venv/bin/python -m pipeline.audit --accept 5 --issues "$issues"
mkdir -p "$world/home/.keras" "$world/kaggle/working"
printf '{"backend": "numpy", "floatx": "float16"}\n' > "$world/home/.keras/keras.json"
printf 'ImageId,Label\n1,7\n' > "$world/kaggle/working/submission.csv"
