"""What the platform reports: health figures, metrics, the doctor, the catalog, run budgets."""
