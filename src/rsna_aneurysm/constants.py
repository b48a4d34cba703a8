"""Competition facts in one place: column names and order, modalities, label maps, DICOM tag allow-list.

Everything here comes from the competition's data description (see ``shared/docs/competition.md``). Orders
matter: the leaderboard matches submission columns by position.
"""

from __future__ import annotations

ID_COL = "SeriesInstanceUID"
SOP_COL = "SOPInstanceUID"

LOCATION_COLS: tuple[str, ...] = (
    "Left Infraclinoid Internal Carotid Artery",
    "Right Infraclinoid Internal Carotid Artery",
    "Left Supraclinoid Internal Carotid Artery",
    "Right Supraclinoid Internal Carotid Artery",
    "Left Middle Cerebral Artery",
    "Right Middle Cerebral Artery",
    "Anterior Communicating Artery",
    "Left Anterior Cerebral Artery",
    "Right Anterior Cerebral Artery",
    "Left Posterior Communicating Artery",
    "Right Posterior Communicating Artery",
    "Basilar Tip",
    "Other Posterior Circulation",
)
ANEURYSM_PRESENT = "Aneurysm Present"
# The 14 label columns in submission order.
LABEL_COLS: tuple[str, ...] = (*LOCATION_COLS, ANEURYSM_PRESENT)
N_LABELS = len(LABEL_COLS)

# train.csv: 18 columns in this exact order.
TRAIN_COLS: tuple[str, ...] = (ID_COL, "PatientAge", "PatientSex", "Modality", *LABEL_COLS)
LOCALIZER_COLS: tuple[str, ...] = (ID_COL, SOP_COL, "coordinates", "location")

MODALITIES: tuple[str, ...] = ("CTA", "MRA", "MRI T2", "MRI T1post")
# What the DICOM Modality tag holds for each competition modality.
DICOM_MODALITY = {"CTA": "CT", "MRA": "MR", "MRI T2": "MR", "MRI T1post": "MR"}

# Leaderboard weights: 1 for each location, 13 for Aneurysm Present (normalised to sum 1 by the metric).
METRIC_WEIGHTS: tuple[float, ...] = (*([1.0] * len(LOCATION_COLS)), 13.0)

# Vessel label map of segmentations/<uid>/<uid>_cowseg.nii (0 is background).
SEG_LABELS: dict[int, str] = {
    1: "Other Posterior Circulation",
    2: "Basilar Tip",
    3: "Right Posterior Communicating Artery",
    4: "Left Posterior Communicating Artery",
    5: "Right Infraclinoid Internal Carotid Artery",
    6: "Left Infraclinoid Internal Carotid Artery",
    7: "Right Supraclinoid Internal Carotid Artery",
    8: "Left Supraclinoid Internal Carotid Artery",
    9: "Right Middle Cerebral Artery",
    10: "Left Middle Cerebral Artery",
    11: "Right Anterior Cerebral Artery",
    12: "Left Anterior Cerebral Artery",
    13: "Anterior Communicating Artery",
}
SEG_LABEL_OF: dict[str, int] = {name: value for value, name in SEG_LABELS.items()}


def _lr_pairs() -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, name in enumerate(LABEL_COLS):
        if name.startswith("Left "):
            pairs.append((i, LABEL_COLS.index("Right " + name[len("Left "):])))
    return tuple(pairs)


# Index pairs (left, right) into LABEL_COLS that a left-right flip swaps.
LR_PAIRS: tuple[tuple[int, int], ...] = _lr_pairs()
# Permutation of LABEL_COLS under a left-right flip: flipped_labels = labels[..., LR_PERMUTATION].
LR_PERMUTATION: tuple[int, ...] = tuple(
    next((b if i == a else a for a, b in LR_PAIRS if i in (a, b)), i) for i in range(N_LABELS)
)

# The only tags (beside PixelData and SeriesInstanceUID) the hidden test series carry.
TEST_TAGS: frozenset[str] = frozenset({
    "BitsAllocated", "BitsStored", "Columns", "FrameOfReferenceUID", "HighBit", "ImageOrientationPatient",
    "ImagePositionPatient", "InstanceNumber", "Modality", "PatientID", "PhotometricInterpretation",
    "PixelRepresentation", "PixelSpacing", "PlanarConfiguration", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "Rows", "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SliceThickness",
    "SpacingBetweenSlices", "StudyInstanceUID", "TransferSyntaxUID",
})
TEST_TAGS_WITH_DATA: frozenset[str] = TEST_TAGS | {"PixelData", "SeriesInstanceUID"}
