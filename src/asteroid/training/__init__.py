"""Training and evaluation around the plain models: the LightningModule (losses, schedules, exact resumption), its
validation and test hooks and figures, the Trainer callbacks the `asteroid` command adds, and rotation
augmentation."""
