"""Names of the files in a run folder (shared by the training job and the prediction loader)."""

#: Files a complete run folder holds; ``run.json`` is written last.
RUN_FILES = ("config.yaml", "genes.txt", "model.pt", "reference.h5", "run.json")
