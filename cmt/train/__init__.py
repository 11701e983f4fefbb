"""Pretraining and prompt tuning."""
