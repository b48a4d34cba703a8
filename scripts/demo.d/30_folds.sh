# Step 30: patient-grouped, multilabel-stratified folds (PatientID read from one DICOM header per series). With ~32
# series some rare locations cannot have a positive in every fold: the command says which.
set -euo pipefail
"$PY" -m rsna_aneurysm.cli folds --data "$OUT/data" --k 4 --seed 0 --read-patient-ids --out "$OUT/data/folds.parquet"
