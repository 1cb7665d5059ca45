"""The simulated hospital: multi-system, messy, bilingual synthetic data with ground truth."""
