"""The tasks a user asks for, as plain functions: the command line and the widgets both call these.

Each takes engine objects (jobs, options, a backbone, a session), ``progress`` / ``cancel`` callbacks,
and returns plain results; nothing here knows about terminals or Qt.

| module | tasks |
|---|---|
| `training.py` | the training set of annotated cells, training a head into a bundle |
| `predicting.py` | predicting every cell with a bundle or a head trained now; bundles of a session |
| `reports.py` | cross-validation, low-shot curve, frozen vs fine-tuned, the report |
| `finetuning.py` | a fine-tuning run, its bundle, its summary |
| `images.py` | a CellImage from channels marked with stains |
| `cells.py` | label images, cell tables and embeddings written to files |
| `cell_outputs.py` | the same cells as Parquet, Zarr, AnnData; per-well profiles from a run's files |
| `preflight.py` | checks before the long work: outputs, model, annotations, images, crop memory |
| `pretraining.py` | self-supervised DINO on the user's cells: the cells, the run and its files, a kNN probe |
"""

from .finetuning import FinetuneRun, finetune_run, finetune_to_file, file_summary, run_summary
from .images import image_from_channels
from .predicting import (
    PredictionModel, PredictionResult, bundle_from_session, embeddings_fit_bundle, predict_session_with_bundle,
    predict_with_model, prediction_model, session_prediction_model,
)
from .preflight import Plan, preflight
from .reports import (
    EvaluationPlan, Report, build_report, compare_frozen_vs_finetuned, evaluate, model_description, report_text,
    write_report,
)
from .training import TrainedModel, TrainingSet, annotated_images, train_model, training_set

__all__ = [
    "EvaluationPlan", "FinetuneRun", "Plan", "PredictionModel", "PredictionResult", "Report", "TrainedModel", "TrainingSet",
    "annotated_images", "build_report", "bundle_from_session", "compare_frozen_vs_finetuned", "embeddings_fit_bundle",
    "evaluate", "file_summary", "finetune_run", "finetune_to_file", "image_from_channels", "model_description",
    "predict_session_with_bundle", "predict_with_model", "prediction_model", "preflight", "session_prediction_model", "report_text", "run_summary",
    "train_model", "training_set", "write_report",
]
